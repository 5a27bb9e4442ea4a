"""Composition (issue 7, 14): the built-in `vit-max`, `detr-max` and `detr-r50-backbone` recipes, each pass's own
savings, where the cost went.

1. `vit-max` (prune 30% with Taylor importance on 64 training images, then ToMe r = 10) on the trained ViT in
   ../shared/data/vit-cifar10: top-1 on a class-balanced subset of cifar10/test.parquet before and after, params,
   FLOPs and latency (the report's, on one test image), and what each pass saved.
2. `detr-max` (the ResNet-50 backbone and the encoder/decoder FFNs pruned by Torch-Pruning with Taylor importance
   on the calibration image, token clipping after encoder layer 0, ACT after it) and `detr-r50-backbone` (the
   backbone pruning alone) on the full-size DETR-R50 architecture with random weights (no pretrained DETR exists
   here), measured on the real 800×1066 COCO fixture image: params, FLOPs, each pass's savings, the per-part table
   (params and FLOPs of backbone / encoder / decoder / heads / the rest, FLOPs by top-level module with torch's
   FlopCounterMode), latency of the original and the compressed model interleaved at one thread and at two, and
   fidelity to the original (mean L2 distance of the predicted boxes, cosine of the class logits, queries whose
   top class is unchanged).

Every output is saved, reloaded with `compressor.load`, and compared with the model in memory.

    python benchmarks/compose.py [--sections vit detr detr-backbone] [--per-class 200] [--workdir W]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # threads that wait do not spin on a shared machine

import torch  # noqa: E402
from PIL import Image  # noqa: E402

import compressor  # noqa: E402
from compressor.evaluate.cost import flop_counter, interleaved_latency_ms  # noqa: E402
from compressor.sources import load_source  # noqa: E402
from detr_r50_act import IMAGE, build_checkpoint  # noqa: E402
from prune import HERE, SHARED, balanced_test_subset, log, reload_difference, top1  # noqa: E402

#: DETR's top-level parts, by module name under DetrForObjectDetection; "other" is what none of them holds (input
#: projection, position embeddings, query embeddings)
DETR_PARTS = {"backbone": ("model.backbone",), "encoder": ("model.encoder",), "decoder": ("model.decoder",),
              "heads": ("class_labels_classifier", "bbox_predictor")}


def cost(report: dict) -> dict:
    """The report's before/after figures and what each pass saved."""
    return {"params": report["params"], "flops": report["flops"], "latency_ms": report["latency_ms"],
            "input": report["input"], "fidelity": report["fidelity"],
            "passes": [{"name": entry["name"], "params": entry["params"], "flops": entry["flops"],
                        "summary": entry["summary"]} for entry in report["passes"]]}


def vit(workdir: Path, per_class: int, latency_runs: int) -> dict:
    source = SHARED / "vit-cifar10"
    original = load_source(source)
    pixels, labels = balanced_test_subset(per_class, original.adapter)
    start = time.perf_counter()
    result = compressor.compress(source, "vit-max", calib=str(SHARED / "cifar10" / "train.parquet"),
                                 calib_samples=64, progress=False, latency_runs=latency_runs)
    seconds = time.perf_counter() - start
    entry = {"recipe": "vit-max", "test_images": len(labels), **cost(result.report),
             "top1": {"before": top1(original.model, pixels, labels), "after": top1(result.model, pixels, labels)},
             "compress_seconds": round(seconds, 1),
             "reload_max_abs_diff": reload_difference(result, workdir, "vit-cifar10-max")}
    log(f"vit-max: top-1 {entry['top1']}, FLOPs ×{entry['flops']['after'] / entry['flops']['before']:.3f}")
    return entry


@torch.no_grad()
def detr_fidelity(original, compressed, inputs: dict) -> dict:
    before, after = original(**inputs), compressed(**inputs)
    boxes = (before.pred_boxes - after.pred_boxes).norm(dim=-1)
    logits = torch.nn.functional.cosine_similarity(before.logits.flatten(1), after.logits.flatten(1)).item()
    same = (before.logits.argmax(-1) == after.logits.argmax(-1)).float().mean().item()
    return {"box_l2_mean": boxes.mean().item(), "box_l2_max": boxes.max().item(), "logits_cosine": logits,
            "top_class_agreement": same, "queries": before.logits.shape[1]}


def _part_of(name: str) -> str:
    return next((part for part, prefixes in DETR_PARTS.items()
                 if any(name == p or name.startswith(p + ".") for p in prefixes)), "other")


@torch.no_grad()
def detr_parts(model, inputs: dict) -> dict:
    """Params and FLOPs per part of a DETR (FLOPs as `count_flops` counts them: torch's FlopCounterMode by
    top-level module, plus the work ACT's kernels report as uncounted, in the part that holds them)."""
    counter = flop_counter()
    with counter:
        model(**inputs)
    counts, root = counter.get_flop_counts(), type(model).__name__
    flops = {part: sum(sum(counts.get(f"{root}.{prefix}", {}).values()) for prefix in prefixes)
             for part, prefixes in DETR_PARTS.items()}
    flops["other"] = sum(counts["Global"].values()) - sum(flops.values())
    params = dict.fromkeys(flops, 0)
    for name, module in model.named_modules():
        flops[_part_of(name)] += int(getattr(module, "uncounted_flops", 0))
    for name, parameter in dict(model.named_parameters()).items():  # a tied parameter counts once
        params[_part_of(name)] += parameter.numel()
    return {part: {"params": params[part], "flops": int(flops[part])} for part in flops}


def part_table(before: dict, after: dict) -> str:
    rows = ["| part | params before → after | FLOPs before → after |", "|---|---|---|"]
    for part in [*before, "total"]:
        b = before[part] if part != "total" else {k: sum(v[k] for v in before.values()) for k in ("params", "flops")}
        a = after[part] if part != "total" else {k: sum(v[k] for v in after.values()) for k in ("params", "flops")}
        ratio = lambda key: f" (×{a[key] / b[key]:.3f})" if b[key] else ""  # noqa: E731
        rows.append(f"| {part} | {b['params'] / 1e6:.3f} M → {a['params'] / 1e6:.3f} M{ratio('params')} | "
                    f"{b['flops'] / 1e9:.2f} G → {a['flops'] / 1e9:.2f} G{ratio('flops')} |")
    return "\n".join(rows)


def threaded_latency(original, compressed, inputs: dict, runs: int) -> dict:
    """Median latency of the two models interleaved run by run, at one thread and at two."""
    measured, threads_before = {}, torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            before, after = interleaved_latency_ms([original, compressed], inputs, runs=runs)
            measured[f"{threads}_thread"] = {"before_ms": before, "after_ms": after, "ratio": after / before,
                                             "runs": runs}
            log(f"  latency at {threads} thread(s): {before:.0f} ms -> {after:.0f} ms (×{after / before:.3f})")
    finally:
        torch.set_num_threads(threads_before)
    return measured


def detr(workdir: Path, latency_runs: int, recipe: str = "detr-max") -> dict:
    """`recipe` on the full-size DETR-R50 architecture (random weights), the COCO fixture image as calibration
    (Taylor importance) and as the measured input."""
    checkpoint = workdir / "detr-r50-random"
    if not (checkpoint / "config.json").is_file():
        build_checkpoint(checkpoint)
    start = time.perf_counter()
    result = compressor.compress(checkpoint, recipe, calib=str(IMAGE), progress=True, latency_runs=1)
    seconds = time.perf_counter() - start
    original = load_source(checkpoint)
    inputs = original.adapter.prepare_inputs([Image.open(IMAGE).convert("RGB")])
    before, after = detr_parts(original.model, inputs), detr_parts(result.model, inputs)
    log(f"{recipe} on {result.report['input']}:\n" + part_table(before, after))
    entry = {"recipe": recipe, **cost(result.report), "compress_seconds": round(seconds, 1),
             "parts": {"before": before, "after": after},
             "latency": threaded_latency(original.model, result.model, inputs, latency_runs),
             "fidelity_to_original": detr_fidelity(original.model, result.model, inputs),
             "reload_max_abs_diff": reload_difference(result, workdir, f"detr-r50-{recipe}")}
    log(f"{recipe}: FLOPs ×{entry['flops']['after'] / entry['flops']['before']:.3f}, "
        f"params ×{entry['params']['after'] / entry['params']['before']:.3f}, "
        f"reload max abs diff {entry['reload_max_abs_diff']}, fidelity {entry['fidelity_to_original']}")
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=("vit", "detr", "detr-backbone"),
                        default=["vit", "detr", "detr-backbone"])
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--latency-runs", type=int, default=5)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "compose.json")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="compose-"))
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if "vit" in args.sections:
        results["vit"] = vit(workdir, args.per_class, args.latency_runs)
    if "detr" in args.sections:
        results["detr"] = detr(workdir, args.latency_runs)
    if "detr-backbone" in args.sections:
        results["detr_backbone"] = detr(workdir, args.latency_runs, "detr-r50-backbone")
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
