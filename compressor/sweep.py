"""`sweep`: compress a model at every setting of a parameter grid, evaluate each, and plot metric against FLOPs.

The paper's Figure 7 (AP against GFLOPs as ACT's rounds vary) for any pass and any parameter. Every setting is
validated before the first compression, so a typo fails in a second; the original model is the first row, and
every compressed model is measured for fidelity against it on the same data.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any, Sequence

from compressor.data.calibration import load_calibration
from compressor.data.loading import LabelledData
from compressor.errors import CompressorError
from compressor.evaluate.cost import count_flops, count_parameters
from compressor.evaluate.runner import HEADLINE, evaluate
from compressor.pipeline import compress, first_example, resolve_recipe
from compressor.sources import load_source

def parse_grid(entries: Sequence[str]) -> list[list[str]]:
    """`["act.rounds=8,16", "act.bucket_width=2,4"]` → every combination as `--set` overrides, in grid order."""
    axes = []
    for entry in entries:
        key, has_value, values = entry.partition("=")
        choices = [value.strip() for value in values.split(",") if value.strip()]
        if not has_value or not key.strip() or not choices:
            raise CompressorError(f"--grid {entry!r}: expected PASS.PARAM=V1,V2,... (e.g. act.rounds=8,16,32)")
        axes.append([f"{key.strip()}={value}" for value in choices])
    return [list(combination) for combination in itertools.product(*axes)]


def run_sweep(source: str, recipe: str, grid: list[list[str]], data: LabelledData, *, overrides: Sequence[str] = (),
              calib: str | None = None, calib_samples: int = 8, batch_size: int = 32, seed: int = 0,
              progress: bool = True) -> dict[str, Any]:
    """Rows for the original model and each grid setting: FLOPs, params, the task metrics and fidelity."""
    for setting in grid:  # every setting must validate before anything slow happens
        resolve_recipe(recipe, [*overrides, *setting])
    original = load_source(source)
    example = _measuring_example(original, calib, calib_samples, seed)
    baseline = evaluate(original, data, batch_size=batch_size, progress=progress)
    rows = [{"setting": "original", "flops": count_flops(original.model, example),
             "params": count_parameters(original.model), "metrics": baseline["metrics"], "fidelity": None}]
    for setting in grid:
        label = " ".join(setting)
        print(f"sweep: {label}", file=sys.stderr, flush=True)
        result = compress(source, recipe, overrides=[*overrides, *setting], calib=calib, calib_samples=calib_samples,
                          seed=seed, latency_runs=1, progress=False)
        measured = evaluate(result.loaded, data, reference=original, batch_size=batch_size, progress=progress)
        rows.append({"setting": label, "flops": count_flops(result.model, example),
                     "params": count_parameters(result.model), "metrics": measured["metrics"],
                     "fidelity": measured["fidelity"]})
    return {"source": source, "recipe": recipe, "data": data.spec, "examples": len(data), "task": data.task,
            "metric": HEADLINE[data.task], "input": original.adapter.describe_input(example), "rows": rows}


def _measuring_example(loaded, calib, calib_samples, seed):
    """One real image when calibration data is given (ACT's cost depends on the image), else the synthetic one."""
    if calib is None:
        return loaded.adapter.example_inputs(batch_size=1, seed=seed)
    return first_example(load_calibration(calib, loaded.adapter, limit=calib_samples, seed=seed, progress=False))


def format_sweep(sweep: dict[str, Any]) -> str:
    """A markdown table: setting, GFLOPs, params, the metrics, and fidelity to the original."""
    metric_names = list(sweep["rows"][0]["metrics"])
    fidelity_names = sorted({name for row in sweep["rows"] for name in (row["fidelity"] or {})})
    header = ["setting", "GFLOPs", "params (M)", *metric_names, *fidelity_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sweep["rows"]:
        cells = [row["setting"], f"{row['flops'] / 1e9:.3f}", f"{row['params'] / 1e6:.3f}"]
        cells += ["n/a" if row["metrics"][n] is None else f"{row['metrics'][n]:.4f}" for n in metric_names]
        cells += [f"{(row['fidelity'] or {}).get(n, float('nan')):.4g}" if row["fidelity"] else "-"
                  for n in fidelity_names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(sweep: dict[str, Any], path) -> None:
    """metric against GFLOPs, one labelled point per setting, the original marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    metric = sweep["metric"]
    figure, axes = plt.subplots(figsize=(6, 4))
    rows = sweep["rows"]
    flops = [row["flops"] / 1e9 for row in rows]
    values = [row["metrics"][metric] or 0.0 for row in rows]
    axes.plot(flops[1:], values[1:], "o-", label=sweep["recipe"])
    axes.plot(flops[:1], values[:1], "k*", markersize=12, label="original")
    for x, y, row in zip(flops, values, rows):
        axes.annotate(row["setting"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes.set_xlabel(f"GFLOPs per image ({sweep['input']})")
    axes.set_ylabel(metric)
    axes.set_title(f"{sweep['source']} on {sweep['examples']} examples")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
