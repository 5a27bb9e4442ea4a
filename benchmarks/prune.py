"""Structural pruning (`prune` pass): cost on full-size architectures, reload, and accuracy of a trained ViT.

1. ViT-B/16 (HF `ViTConfig()` and timm `vit_base_patch16_224`, 1000 classes, random weights) pruned 50% in every
   width, residual stream included (`prune.hidden=true`, Torch-Pruning's "uniform" setting): params and MACs against
   Torch-Pruning's published anchor (86.57 M / 17.59 G MACs -> 22.05 M / 4.61 G), then save, `compressor.load`,
   and the largest output difference to the in-memory pruned model.
2. Swin-T (`SwinConfig()`) pruned at ratio 0.3 with the shared width: reloads and runs (Torch-Pruning #490).
3. DETR-R50 (`DetrConfig(use_pretrained_backbone=False)`) with its encoder and decoder FFNs pruned 50%: reloads
   and runs at 800×1066.
4. The trained ViT in ../shared/data/vit-cifar10: top-1 on a class-balanced subset of CIFAR-10 test after pruning
   at several ratios, against FLOPs; magnitude and Taylor importance (Taylor on 64 training images).

No pretrained ViT-B, Swin or DETR checkpoint can be installed here: sections 1-3 measure cost and reload only.

    python benchmarks/prune.py [--sections vit-b swin-t detr vit-cifar10] [--per-class 200]   # 1000 = all of test
    python benchmarks/prune.py --markdown     # the tables of docs/benchmarks.md, from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

import compressor  # noqa: E402
from compressor.evaluate.cost import count_flops, count_parameters  # noqa: E402
from compressor.sources import load_source  # noqa: E402

#: Torch-Pruning's published ViT-B/16 result (examples/transformers/readme.md): params, MACs before and after 50%
ANCHOR = {"params_before": 86.57e6, "macs_before": 17.59e9, "params_after": 22.05e6, "macs_after": 4.61e9}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def save_hf(directory: Path, model, processor=None) -> Path:
    model.eval().save_pretrained(directory)
    if processor is not None:
        processor.save_pretrained(directory)
    return directory


def reload_difference(result, workdir: Path, name: str) -> float:
    """Save, reload with compressor.load, and compare primary outputs on a fresh example input."""
    saved = compressor.save(result, workdir / name, overwrite=True)
    reloaded = load_source(saved)
    inputs = result.loaded.adapter.example_inputs(batch_size=1, seed=11)
    with torch.no_grad():
        before = result.loaded.adapter.primary_output(result.model(**inputs), inputs)
        after = reloaded.adapter.primary_output(reloaded.model(**inputs), inputs)
    return float((before - after).abs().max())


def cost_entry(result, seconds: float, difference: float) -> dict:
    report = result.report
    return {"params": report["params"], "macs": {k: v // 2 for k, v in report["flops"].items()},
            "latency_ms": report["latency_ms"], "input": report["input"], "prune_seconds": round(seconds, 1),
            "reload_max_abs_diff": difference, "summary": report["passes"][0]["summary"]}


def prune_and_reload(source, overrides: list[str], workdir: Path, name: str, latency_runs: int) -> dict:
    log(f"{name}: prune with {' '.join(overrides)}")
    start = time.perf_counter()
    result = compressor.compress(source, "prune", overrides=overrides, progress=False, latency_runs=latency_runs)
    seconds = time.perf_counter() - start
    entry = cost_entry(result, seconds, reload_difference(result, workdir, name))
    entry["overrides"] = overrides
    log(f"{name}: params {entry['params']}, MACs {entry['macs']}, reload diff {entry['reload_max_abs_diff']:.2e}")
    return entry


def vit_b(workdir: Path, latency_runs: int) -> dict:
    import timm
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    hf_dir = save_hf(workdir / "vit-b16-hf", ViTForImageClassification(ViTConfig(num_labels=1000)))
    torch.manual_seed(0)
    timm_dir = workdir / "vit-b16-timm"
    timm.models.save_for_hf(timm.create_model("vit_base_patch16_224", pretrained=False).eval(), timm_dir,
                            safe_serialization=True)
    overrides = ["prune.ratio=0.5", "prune.hidden=true", "prune.attention=head_dim"]
    return {"anchor_torch_pruning": ANCHOR,
            "hf": prune_and_reload(hf_dir, overrides, workdir, "vit-b16-hf-pruned", latency_runs),
            "timm": prune_and_reload(timm_dir, overrides, workdir, "vit-b16-timm-pruned", latency_runs)}


def swin_t(workdir: Path, latency_runs: int) -> dict:
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(0)
    source = save_hf(workdir / "swin-t", SwinForImageClassification(SwinConfig(num_labels=1000)))
    return prune_and_reload(source, ["prune.ratio=0.3", "prune.hidden=true"], workdir, "swin-t-pruned",
                            latency_runs)


def detr(workdir: Path, latency_runs: int) -> dict:
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor

    torch.manual_seed(0)
    source = save_hf(workdir / "detr-r50", DetrForObjectDetection(DetrConfig(use_pretrained_backbone=False)),
                     DetrImageProcessor())
    return prune_and_reload(source, ["prune.ratio=0.5", "prune.targets=[re:.*layers\\.\\d+\\.mlp$]"], workdir,
                            "detr-r50-ffn-pruned", latency_runs)


# --- the trained ViT on CIFAR-10 ------------------------------------------------------------------------------
def balanced_test_subset(per_class: int, adapter) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `per_class` test images of each class, preprocessed by the model's own processor."""
    import datasets

    data = datasets.load_dataset("parquet", data_files=str(SHARED / "cifar10" / "test.parquet"), split="train")
    labels = torch.tensor(data["label"])
    chosen = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(10)]).sort().values
    images = data.select(chosen.tolist())["img"]
    pixels = torch.cat([adapter.prepare_inputs(images[i:i + 250])["pixel_values"] for i in range(0, len(images), 250)])
    return pixels, labels[chosen]


@torch.no_grad()
def top1(model, pixels: torch.Tensor, labels: torch.Tensor, batch: int = 250) -> float:
    correct = 0
    for start in range(0, len(pixels), batch):
        logits = model(pixel_values=pixels[start:start + batch]).logits
        correct += int((logits.argmax(1) == labels[start:start + batch]).sum())
    return correct / len(labels)


def vit_cifar10(workdir: Path, per_class: int) -> dict:
    source = SHARED / "vit-cifar10"
    original = load_source(source)
    pixels, labels = balanced_test_subset(per_class, original.adapter)
    example = {"pixel_values": pixels[:1]}
    rows = [{"importance": "none", "hidden": False, "ratio": 0.0, "top1": top1(original.model, pixels, labels),
             "flops": count_flops(original.model, example), "params": count_parameters(original.model)}]
    log(f"vit-cifar10 original: top-1 {rows[0]['top1']:.4f}")
    calib = str(SHARED / "cifar10" / "train.parquet")
    for importance in ("magnitude", "taylor"):
        for hidden in (False, True):
            for ratio in (0.1, 0.2, 0.3, 0.5):
                overrides = [f"prune.ratio={ratio}", f"prune.importance={importance}", f"prune.hidden={hidden}"]
                result = compressor.compress(source, "prune", overrides=overrides, progress=False, latency_runs=1,
                                             calib=calib if importance == "taylor" else None, calib_samples=64)
                row = {"importance": importance, "hidden": hidden, "ratio": ratio,
                       "top1": top1(result.model, pixels, labels), "flops": count_flops(result.model, example),
                       "params": count_parameters(result.model)}
                rows.append(row)
                log(f"vit-cifar10 {importance} hidden={hidden} ratio {ratio}: top-1 {row['top1']:.4f}, "
                    f"FLOPs ×{row['flops'] / rows[0]['flops']:.3f}")
    return {"test_images": len(labels), "per_class": per_class, "calibration": "64 images of train.parquet (taylor)",
            "rows": rows}


def _millions(value: float) -> str:
    return f"{value / 1e6:.2f} M"


def _giga(value: float) -> str:
    return f"{value / 1e9:.2f} G"


def markdown(results: dict) -> str:
    """The tables of docs/benchmarks.md, from the JSON."""
    lines = []
    if "vit-b" in results:
        anchor = results["vit-b"]["anchor_torch_pruning"]
        lines += ["| ViT-B/16, 50% uniform | params before | params after | MACs before | MACs after | reload max abs diff |",
                  "|---|---|---|---|---|---|",
                  f"| Torch-Pruning (published) | {_millions(anchor['params_before'])} | "
                  f"{_millions(anchor['params_after'])} | {_giga(anchor['macs_before'])} | {_giga(anchor['macs_after'])} | — |"]
        for library in ("hf", "timm"):
            entry = results["vit-b"][library]
            lines.append(f"| compressor, {library} | {_millions(entry['params']['before'])} | "
                         f"{_millions(entry['params']['after'])} | {_giga(entry['macs']['before'])} | "
                         f"{_giga(entry['macs']['after'])} | {entry['reload_max_abs_diff']:.1e} |")
        lines.append("")
    others = [(name, label) for name, label in (("swin-t", "Swin-T, ratio 0.3, shared width"),
                                                ("detr", "DETR-R50, encoder+decoder FFNs 50%")) if name in results]
    if others:
        lines += ["| model | params | MACs | latency (median of 3, shared CPU) | reload max abs diff | prune time |",
                  "|---|---|---|---|---|---|"]
        for name, label in others:
            entry = results[name]
            lines.append(f"| {label} | {_millions(entry['params']['before'])} → {_millions(entry['params']['after'])}"
                         f" | {_giga(entry['macs']['before'])} → {_giga(entry['macs']['after'])} | "
                         f"{entry['latency_ms']['before']:.0f} → {entry['latency_ms']['after']:.0f} ms | "
                         f"{entry['reload_max_abs_diff']:.1e} | {entry['prune_seconds']:.0f} s |")
        lines.append("")
    if "vit-cifar10" in results:
        rows = results["vit-cifar10"]["rows"]
        base = rows[0]
        lines += ["| importance | shared width | ratio | params | FLOPs | FLOPs/original | top-1 |",
                  "|---|---|---|---|---|---|---|",
                  f"| (original) | — | 0 | {_millions(base['params'])} | {_giga(base['flops'])} | 1.000 | "
                  f"{base['top1']:.4f} |"]
        for row in rows[1:]:
            lines.append(f"| {row['importance']} | {'pruned' if row['hidden'] else 'kept'} | {row['ratio']} | "
                         f"{_millions(row['params'])} | {_giga(row['flops'])} | {row['flops'] / base['flops']:.3f} | "
                         f"{row['top1']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["vit-b", "swin-t", "detr", "vit-cifar10"],
                        choices=["vit-b", "swin-t", "detr", "vit-cifar10"])
    parser.add_argument("--per-class", type=int, default=200, help="CIFAR-10 test images per class (1000 = all)")
    parser.add_argument("--latency-runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="where checkpoints and outputs go (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "prune.json")
    parser.add_argument("--markdown", action="store_true", help="only print the tables of the JSON as Markdown")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="prune-bench-"))
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    sections = {"vit-b": lambda: vit_b(workdir, args.latency_runs), "swin-t": lambda: swin_t(workdir, args.latency_runs),
                "detr": lambda: detr(workdir, args.latency_runs),
                "vit-cifar10": lambda: vit_cifar10(workdir, args.per_class)}
    for name in args.sections:
        results[name] = sections[name]()
        results[name]["torch_threads"] = torch.get_num_threads()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({name: results[name] for name in args.sections}, indent=2))


if __name__ == "__main__":
    main()
