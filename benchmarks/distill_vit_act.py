"""Distillation recovers accuracy: the trained CIFAR ViT compressed with coarse ACT (L = 2 rounds), then distilled
from the original on the CIFAR-10 train parquet within a fixed CPU budget (120 steps of 64 images).

Runs, as a user would (each step skipped when its output already exists in --workdir, so an interrupted run
continues):

    python cli.py compress ../shared/data/vit-cifar10 --recipe act --set act.rounds=2 --out W/vit-act2
    python cli.py distill W/vit-act2 --data ../shared/data/cifar10/train.parquet --batch-size 64 --steps 120 \
        --lr 0.0002 --warmup-steps 10 --log-every 10 --checkpoint-every 40 \
        --eval-data ../shared/data/cifar10/test.parquet --eval-limit 2000 --eval-every 40 --out W/run
    python cli.py evaluate M --data ../shared/data/cifar10/test.parquet --limit 2000 --no-card --json W/M.json
        for M in the original, the compressed and the distilled (W/run/best) model

and writes top-1 before compression, after compression and after distillation, with the training time.

    python benchmarks/distill_vit_act.py [--workdir W]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import HERE, SHARED as DATA, cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("distill-vit-act"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "distill_vit_act.json")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    teacher, student, run = DATA / "vit-cifar10", work / "vit-act2", work / "run"
    if not (student / "model.safetensors").is_file():
        cli("compress", str(teacher), "--recipe", "act", "--set", "act.rounds=2", "--out", str(student),
            "--overwrite", "--quiet", "--latency-runs", "1")
    if not (run / "distill.json").is_file():
        cli("distill", str(student), "--data", str(DATA / "cifar10" / "train.parquet"), "--batch-size", "64",
            "--steps", "120", "--lr", "0.0002", "--warmup-steps", "10", "--log-every", "10", "--checkpoint-every",
            "40", "--eval-data", str(DATA / "cifar10" / "test.parquet"), "--eval-limit", "2000", "--eval-every",
            "40", "--out", str(run), "--quiet", *(["--resume"] if (run / "checkpoints").is_dir() else []))
    top1 = {}
    for name, model in (("before_compression", teacher), ("after_compression", student),
                        ("after_distillation", run / "best")):
        result_file = work / f"{model.name}.json"
        if not result_file.is_file():
            cli("evaluate", str(model), "--data", str(DATA / "cifar10" / "test.parquet"), "--limit", "2000",
                "--quiet", "--no-card", "--json", str(result_file))
        top1[name] = json.loads(result_file.read_text())["metrics"]["top1"]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train = [entry for entry in log if "loss" in entry]
    summary = {"top1_on_2000_test_images": top1, "distill": json.loads((run / "distill.json").read_text()),
               "training_images_per_second": train[-1]["images_per_second"],
               "eval_during_training": [entry for entry in log if "eval" in entry]}
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["top1_on_2000_test_images"], indent=2))


if __name__ == "__main__":
    main()
