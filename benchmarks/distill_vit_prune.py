"""Issue 7's last figure: the trained CIFAR ViT's top-1 after pruning and after distillation, against FLOPs.

For each pruning ratio (Taylor importance on 64 training images, head dims and FFN width pruned inside each layer:
the best rows of the pruning table in docs/benchmarks.md), as a user would, each step skipped when its output
already exists in --workdir:

    python cli.py compress ../shared/data/vit-cifar10 --recipe prune --set prune.ratio=R \
        --set prune.importance=taylor --calib ../shared/data/cifar10/train.parquet --calib-samples 64 --out W/prune-R
    python cli.py distill W/prune-R --data ../shared/data/cifar10/train.parquet --batch-size 64 --steps S \
        --lr 0.0003 --warmup-steps 10 --eval-data ../shared/data/cifar10/test.parquet --eval-limit 2000 \
        --eval-every S/2 --out W/prune-R-distilled
    python cli.py evaluate M --data ../shared/data/cifar10/test.parquet --limit 2000 --no-card --json W/M.json

CPU budget per ratio: S steps of 64 images (default 200: 12,800 images, about a quarter epoch).

    python benchmarks/distill_vit_prune.py [--ratios 0.3 0.5] [--steps 200] [--workdir W]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import HERE, SHARED as DATA, cli

TEST, TRAIN = DATA / "cifar10" / "test.parquet", DATA / "cifar10" / "train.parquet"


def top1(model: Path, work: Path) -> dict:
    """Top-1/top-5 of `model` on the seeded 2,000-image test subset (cached in the workdir)."""
    result_file = work / f"{model.parent.name}-{model.name}.json"
    if not result_file.is_file():
        cli("evaluate", str(model), "--data", str(TEST), "--limit", "2000", "--quiet", "--no-card", "--json",
            str(result_file))
    return json.loads(result_file.read_text())["metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workdir", type=Path, default=Path("distill-vit-prune"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "distill_vit_prune.json")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    teacher = DATA / "vit-cifar10"
    rows = [{"ratio": 0.0, "flops_ratio": 1.0, "after_pruning": top1(teacher, work)}]
    for ratio in args.ratios:
        student, run = work / f"prune-{ratio:g}", work / f"prune-{ratio:g}-distilled"
        if not (student / "model.safetensors").is_file():
            cli("compress", str(teacher), "--recipe", "prune", "--set", f"prune.ratio={ratio}", "--set",
                "prune.importance=taylor", "--calib", str(TRAIN), "--calib-samples", "64", "--out", str(student),
                "--overwrite", "--quiet", "--latency-runs", "1")
        if not (run / "distill.json").is_file():
            cli("distill", str(student), "--data", str(TRAIN), "--batch-size", "64", "--steps", str(args.steps),
                "--lr", "0.0003", "--warmup-steps", "10", "--log-every", "20", "--checkpoint-every",
                str(args.steps // 2), "--eval-data", str(TEST), "--eval-limit", "2000", "--eval-every",
                str(args.steps // 2), "--out", str(run), "--quiet",
                *(["--resume"] if (run / "checkpoints").is_dir() else []))
        report = json.loads((student / "report.json").read_text())
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        rows.append({"ratio": ratio, "params": report["params"], "flops": report["flops"],
                     "flops_ratio": report["flops"]["after"] / report["flops"]["before"],
                     "after_pruning": top1(student, work), "after_distillation": top1(run / "best", work),
                     "distill": json.loads((run / "distill.json").read_text()),
                     "training_images_per_second": [e for e in log if "loss" in e][-1]["images_per_second"]})
    args.out.write_text(json.dumps({"test_images": 2000, "steps": args.steps, "batch_size": 64, "rows": rows},
                                   indent=2) + "\n")
    for row in rows:
        print(f"ratio {row['ratio']:g}: FLOPs x{row['flops_ratio']:.3f}  top-1 after pruning "
              f"{row['after_pruning']['top1']:.4f}" + (f", after distillation {row['after_distillation']['top1']:.4f}"
                                                        if "after_distillation" in row else ""))


if __name__ == "__main__":
    main()
