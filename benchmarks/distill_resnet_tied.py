"""Tied weights, then distillation, in one command: the real CIFAR ResNet-56 through the built-in `resnet-pe` recipe
(tied pass, then its distill step) for each way of sharing, scored on the full CIFAR-10 test set.

For each variant V (tied per block, or one weight per stage), as a user would (each step skipped when its output
already exists in --workdir):

    python cli.py compress ../shared/data/resnet-cifar10/resnet56.safetensors --recipe resnet-pe \
        --set tied_weights.share=V --set tied_weights.share_middle=false \
        --calib ../shared/data/cifar10/train.parquet --calib-samples 256 \
        --data ../shared/data/cifar10/train.parquet --eval-data ../shared/data/cifar10/test.parquet \
        --set distill.steps=S --set distill.eval_limit=2000 --set distill.eval_every=S/4 --out W/r56-V
    python cli.py evaluate M --data ../shared/data/cifar10/test.parquet --no-card --json W/M.json
        for M in the original, the tied model before training (W/r56-V.distill/student) and after (W/r56-V)

    python benchmarks/distill_resnet_tied.py [--steps 782] [--variants block stage] [--workdir W]

782 steps of 64 images is one epoch of the 50,000 training images. Writes benchmarks/results/distill_resnet_tied.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import HERE, SHARED, cli

TRAIN, TEST = SHARED / "cifar10" / "train.parquet", SHARED / "cifar10" / "test.parquet"
ORIGINAL = SHARED / "resnet-cifar10" / "resnet56.safetensors"


def top1(model: Path, result_file: Path) -> dict:
    if not result_file.is_file():
        cli("evaluate", str(model), "--data", str(TEST), "--quiet", "--no-card", "--json", str(result_file))
    result = json.loads(result_file.read_text())
    return {"top1": result["metrics"]["top1"], "examples": result["examples"]}


def variant(share: str, steps: int, work: Path) -> dict:
    out = work / f"r56-{share}"
    seconds = None
    if not (out / "model.safetensors").is_file():
        seconds = cli("compress", str(ORIGINAL), "--recipe", "resnet-pe", "--set", f"tied_weights.share={share}",
                      "--set", "tied_weights.share_middle=false", "--calib", str(TRAIN), "--calib-samples", "256",
                      "--data", str(TRAIN), "--eval-data", str(TEST), "--set", f"distill.steps={steps}",
                      "--set", "distill.eval_limit=2000", "--set", f"distill.eval_every={max(1, steps // 4)}",
                      "--out", str(out), "--overwrite", "--quiet", "--latency-runs", "1", "--json")
    report = json.loads((out / "report.json").read_text())
    training = out.with_name(out.name + ".distill")
    log = [json.loads(line) for line in (training / "log.jsonl").read_text().splitlines()]
    return {
        "share": share,
        "params": report["params"],
        "compress_and_distill_seconds": seconds,
        "distillation": report["distillation"],
        "training_images_per_second": [entry for entry in log if "loss" in entry][-1]["images_per_second"],
        "eval_during_training_2000_images": [entry for entry in log if "eval" in entry],
        "full_test_set": {"after_tying": top1(training / "student", work / f"r56-{share}-student.json"),
                          "after_distillation": top1(out, work / f"r56-{share}-distilled.json")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=782, help="distillation steps of 64 images (782: one epoch)")
    parser.add_argument("--variants", nargs="+", default=["block", "stage"], choices=["block", "stage"])
    parser.add_argument("--workdir", type=Path, default=Path("distill-resnet-tied"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "distill_resnet_tied.json")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    summary = {"original": top1(ORIGINAL, args.workdir / "r56-original.json"), "steps": args.steps,
               "variants": [variant(share, args.steps, args.workdir) for share in args.variants]}
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    for entry in summary["variants"]:
        print(f"{entry['share']}: params {entry['params']['before']} -> {entry['params']['after']}; top-1 original "
              f"{summary['original']['top1']:.4f}, tied {entry['full_test_set']['after_tying']['top1']:.4f}, "
              f"distilled {entry['full_test_set']['after_distillation']['top1']:.4f}")


if __name__ == "__main__":
    main()
