"""`cli.py evaluate` with the full-size DETR-R50 on coco128-val, end to end on the CPU: data, preprocessing at
800×1066, forward, post-processing and pycocotools AP.

The architecture is facebook/detr-resnet-50's (`DetrConfig(use_pretrained_backbone=False)`) with random weights,
as no DETR checkpoint installs here: the AP is near zero and only shows the path runs; the time is the point.

    python benchmarks/evaluate_detr_r50.py [--limit N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from detr_r50_act import REPO, build_checkpoint  # noqa: E402

COCO128 = REPO.parent / "shared" / "data" / "coco128-val"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "evaluate_detr_r50.json")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="detr-r50-"))
    checkpoint = workdir / "detr-r50-random"
    if not (checkpoint / "config.json").is_file():
        build_checkpoint(checkpoint)
    result_file = workdir / "evaluate.json"
    command = [sys.executable, str(REPO / "cli.py"), "evaluate", str(checkpoint), "--data", str(COCO128),
               "--limit", str(args.limit), "--batch-size", str(args.batch_size), "--json", str(result_file)]
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    result = json.loads(result_file.read_text())
    summary = {"command": " ".join(command[1:]), "wall_seconds_including_load": round(seconds, 1),
               "evaluate_seconds": result["seconds"], "seconds_per_image": round(result["seconds"] / result["examples"], 2),
               "examples": result["examples"], "metrics": result["metrics"], "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "default")}
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
