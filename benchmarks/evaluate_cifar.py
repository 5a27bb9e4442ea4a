"""`cli.py evaluate` on the real CIFAR-10 models and the whole CIFAR-10 test parquet (10,000 images).

Reproduces the independently measured figures: resnet20 0.8103 and resnet56 0.8320 (../shared/README.md, ImageNet
mean/std) and the trained ViT's test_top1 in ../shared/data/vit-cifar10/train_info.json. Each model runs exactly as
a user runs it, in a subprocess:

    python cli.py evaluate MODEL --data ../shared/data/cifar10/test.parquet --json FILE --quiet

    python benchmarks/evaluate_cifar.py [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data"
MODELS = {
    "resnet20": (DATA / "resnet-cifar10" / "resnet20.safetensors", 0.8103),
    "resnet56": (DATA / "resnet-cifar10" / "resnet56.safetensors", 0.8320),
    "vit-cifar10": (DATA / "vit-cifar10",
                    json.loads((DATA / "vit-cifar10" / "train_info.json").read_text())["test_top1"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "evaluate_cifar.json")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rows = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name, (source, expected) in MODELS.items():
            result_file = Path(workdir) / f"{name}.json"
            command = [sys.executable, str(REPO / "cli.py"), "evaluate", str(source), "--data",
                       str(DATA / "cifar10" / "test.parquet"), "--json", str(result_file), "--quiet",
                       "--batch-size", "250"] + (["--limit", str(args.limit)] if args.limit else [])
            print("$ " + " ".join(command), flush=True)
            subprocess.run(command, check=True, env=env)
            result = json.loads(result_file.read_text())
            rows[name] = {"top1": result["metrics"]["top1"], "top5": result["metrics"]["top5"],
                          "expected_top1": expected, "examples": result["examples"], "seconds": result["seconds"]}
            print(f"{name}: top-1 {rows[name]['top1']:.4f} (expected {expected:.4f})", flush=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
