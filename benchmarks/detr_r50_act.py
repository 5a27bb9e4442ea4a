"""The headline command on the full-size DETR-R50 architecture, end to end on the CPU.

No pretrained DETR checkpoint can be installed here, so the facebook/detr-resnet-50 architecture is built from
`DetrConfig(use_pretrained_backbone=False)` (random weights, right for cost, silent about accuracy) and saved with
`save_pretrained`. Then, exactly as a user would:

    python cli.py compress DIR --recipe act --calib ../shared/data/coco-fixture/000000039769.png --out OUT

(the COCO image makes the measured example a real 800×1066 input), and `compressor.load(OUT)` must give the same
outputs as the model in memory right after compression. Writes JSON with the report and the reload difference.

    python benchmarks/detr_r50_act.py [--workdir DIR] [--latency-runs N]
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
IMAGE = REPO.parent / "shared" / "data" / "coco-fixture" / "000000039769.png"


def build_checkpoint(directory: Path) -> None:
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor

    torch.manual_seed(0)
    DetrForObjectDetection(DetrConfig(use_pretrained_backbone=False)).eval().save_pretrained(directory)
    DetrImageProcessor().save_pretrained(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where to write the checkpoint and output (default: a temp dir)")
    parser.add_argument("--latency-runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "detr_r50_act.json")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="detr-r50-"))
    checkpoint, output = workdir / "detr-r50-random", workdir / "detr-r50-act"

    if not (checkpoint / "config.json").is_file():
        build_checkpoint(checkpoint)
    command = [sys.executable, str(REPO / "cli.py"), "compress", str(checkpoint), "--recipe", "act", "--calib",
               str(IMAGE), "--out", str(output), "--overwrite", "--latency-runs", str(args.latency_runs)]
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    print(done.stdout)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        raise SystemExit(f"compress failed with status {done.returncode}")

    # reload equality: compress in this process, save, reload, compare on the real image
    import compressor
    from compressor.data.calibration import load_calibration
    from compressor.sources import load_source

    result = compressor.compress(checkpoint, "act", calib=str(IMAGE), progress=False, latency_runs=1)
    saved = compressor.save(result, workdir / "detr-r50-act-inprocess", overwrite=True)
    reloaded = load_source(saved)
    inputs = load_calibration(str(IMAGE), result.loaded.adapter, limit=1)[0]
    with torch.no_grad():
        before, after = result.model(**inputs), reloaded.model(**inputs)
    difference = max(float((before.logits - after.logits).abs().max()),
                     float((before.pred_boxes - after.pred_boxes).abs().max()))
    report = json.loads((output / "report.json").read_text())
    summary = {"command": " ".join(command[1:]), "compress_seconds": round(seconds, 1),
               "reload_max_abs_diff": difference, "input": report["input"], "params": report["params"],
               "flops": report["flops"], "latency_ms": report["latency_ms"], "fidelity": report["fidelity"],
               "act": report["passes"][0]["statistics"], "environment": report["environment"],
               "output_files": sorted(p.name for p in output.iterdir())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"compress took {seconds:.0f} s; reload max abs diff {difference:.2e}; wrote {args.out}")


if __name__ == "__main__":
    main()
