"""The headline command on the full-size DETR-R50 architecture (or DETR-DC5, Conditional DETR), end to end on the CPU.

No pretrained DETR checkpoint can be installed here, so the facebook/detr-resnet-50 architecture is built from
`DetrConfig(use_pretrained_backbone=False)` (random weights, right for cost, silent about accuracy) and saved with
`save_pretrained`; `--dc5` builds facebook/detr-resnet-50-dc5's (`dilation=True`: the timm ResNet-50's last stage
dilated, stride 16, four times the encoder tokens) and `--conditional` microsoft/conditional-detr-resnet-50's
(`ConditionalDetrConfig`, 300 queries), both combinable. Then, exactly as a user would:

    python cli.py compress DIR --recipe act --calib ../shared/data/coco-fixture/000000039769.png --out OUT

(the COCO image makes the measured example a real 800×1066 input), and `compressor.load(OUT)` must give the same
outputs as the model in memory right after compression. Writes JSON with the report and the reload difference.

    python benchmarks/detr_r50_act.py [--dc5] [--conditional] [--workdir DIR] [--latency-runs N] [--threads N]
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


def architecture_name(dc5: bool, conditional: bool) -> str:
    return ("conditional-" if conditional else "") + "detr-r50" + ("-dc5" if dc5 else "")


def build_checkpoint(directory: Path, dc5: bool = False, conditional: bool = False) -> None:
    import transformers

    prefix = "ConditionalDetr" if conditional else "Detr"
    config, model, processor = (getattr(transformers, prefix + part)
                                for part in ("Config", "ForObjectDetection", "ImageProcessor"))
    torch.manual_seed(0)
    model(config(use_pretrained_backbone=False, dilation=dc5)).eval().save_pretrained(directory)
    processor().save_pretrained(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where to write the checkpoint and output (default: a temp dir)")
    parser.add_argument("--dc5", action="store_true", help="the dilated-C5 variant (stride 16)")
    parser.add_argument("--conditional", action="store_true", help="Conditional DETR instead of DETR")
    parser.add_argument("--latency-runs", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads here and in the compress process (default: "
                                                    "torch's)")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/<architecture>_act.json")
    args = parser.parse_args()
    name = architecture_name(args.dc5, args.conditional)
    out = args.out or HERE / "results" / f"{name.replace('-', '_')}_act.json"
    environment = dict(os.environ)
    if args.threads:
        torch.set_num_threads(args.threads)
        environment.update(OMP_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY="PASSIVE")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"{name}-"))
    checkpoint, output = workdir / f"{name}-random", workdir / f"{name}-act"

    if not (checkpoint / "config.json").is_file():
        build_checkpoint(checkpoint, args.dc5, args.conditional)
    command = [sys.executable, str(REPO / "cli.py"), "compress", str(checkpoint), "--recipe", "act", "--calib",
               str(IMAGE), "--out", str(output), "--overwrite", "--latency-runs", str(args.latency_runs)]
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
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
    saved = compressor.save(result, workdir / f"{name}-act-inprocess", overwrite=True)
    reloaded = load_source(saved)
    inputs = load_calibration(str(IMAGE), result.loaded.adapter, limit=1)[0]
    with torch.no_grad():
        before, after = result.model(**inputs), reloaded.model(**inputs)
    difference = max(float((before.logits - after.logits).abs().max()),
                     float((before.pred_boxes - after.pred_boxes).abs().max()))
    report = json.loads((output / "report.json").read_text())
    summary = {"architecture": name, "command": " ".join(command[1:]), "compress_seconds": round(seconds, 1),
               "reload_max_abs_diff": difference, "input": report["input"], "params": report["params"],
               "flops": report["flops"], "latency_ms": report["latency_ms"], "fidelity": report["fidelity"],
               "act": report["passes"][0]["statistics"], "environment": report["environment"],
               "output_files": sorted(p.name for p in output.iterdir())}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    ratios = ", ".join(f"{key} x{report[key]['after'] / report[key]['before']:.3f}" for key in ("flops", "latency_ms"))
    print(f"{name}: {ratios}; compress took {seconds:.0f} s; reload max abs diff {difference:.2e}; wrote {out}")


if __name__ == "__main__":
    main()
