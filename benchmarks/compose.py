"""Composition (issue 7): the built-in `vit-max` and `detr-max` recipes, each pass's own savings, the trade-off.

1. `vit-max` (prune 30% with Taylor importance on 64 training images, then ToMe r = 10) on the trained ViT in
   ../shared/data/vit-cifar10: top-1 on a class-balanced subset of cifar10/test.parquet before and after, params,
   FLOPs and latency (the report's, on one test image), and what each pass saved.
2. `detr-max` (encoder/decoder FFNs pruned 50%, tied weights, token clipping after encoder layer 0, ACT after it)
   on the full-size DETR-R50 architecture with random weights (no pretrained DETR exists here), measured on the
   real 800×1066 COCO fixture image: params, FLOPs, latency, each pass's savings, and fidelity to the original
   (mean L2 distance of the predicted boxes, cosine of the class logits, queries whose top class is unchanged).

Both outputs are saved, reloaded with `compressor.load`, and compared with the model in memory.

    python benchmarks/compose.py [--sections vit detr] [--per-class 200] [--workdir W]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

import compressor
from compressor.sources import load_source
from detr_r50_act import IMAGE, build_checkpoint
from prune import HERE, SHARED, balanced_test_subset, log, reload_difference, top1


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


def detr(workdir: Path, latency_runs: int) -> dict:
    checkpoint = workdir / "detr-r50-random"
    if not (checkpoint / "config.json").is_file():
        build_checkpoint(checkpoint)
    start = time.perf_counter()
    result = compressor.compress(checkpoint, "detr-max", calib=str(IMAGE), progress=True, latency_runs=latency_runs)
    seconds = time.perf_counter() - start
    original = load_source(checkpoint)
    inputs = original.adapter.prepare_inputs([Image.open(IMAGE).convert("RGB")])
    entry = {"recipe": "detr-max", **cost(result.report), "compress_seconds": round(seconds, 1),
             "fidelity_to_original": detr_fidelity(original.model, result.model, inputs),
             "reload_max_abs_diff": reload_difference(result, workdir, "detr-r50-max")}
    log(f"detr-max: FLOPs ×{entry['flops']['after'] / entry['flops']['before']:.3f}, "
        f"fidelity {entry['fidelity_to_original']}")
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=("vit", "detr"), default=["vit", "detr"])
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
        results["detr"] = detr(workdir, min(args.latency_runs, 3))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
