"""The before/after report: what `compress` gained and lost, as JSON and as a table for the terminal.

Every number is measured in the run that wrote it (params counted, FLOPs executed under torch's counter, latency
as interleaved medians in one process, fidelity as cosine similarity to the original model's outputs).
"""

from __future__ import annotations

import platform
from typing import Any

import torch

from compressor.evaluate.runner import HEADLINE
from compressor.version import __version__


def environment() -> dict[str, Any]:
    """Versions and machine facts that make the figures reproducible."""
    import timm
    import transformers

    return {
        "compressor": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def attribute_costs(entries: list[dict[str, Any]], costs: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Give each pass entry the params and FLOPs before and after it: `costs` holds (params, FLOPs) of the model
    before the first pass and after each one, so consecutive passes share a measurement and savings add up."""
    for entry, before, after in zip(entries, costs, costs[1:]):
        entry["params"] = {"before": before[0], "after": after[0]}
        entry["flops"] = {"before": before[1], "after": after[1]}
    return entries


def cost_by_part(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The report's `parts` table from the per-part costs (part -> {"params", "flops"}) of the original and the
    compressed model: per part, params and FLOPs before and after and their after/before `ratio` (null where the
    part had none). A part empty on both sides is left out."""
    empty = {"params": 0, "flops": 0}
    table = {}
    for part in dict.fromkeys([*before, *after]):
        old, new = before.get(part, empty), after.get(part, empty)
        if any(old.values()) or any(new.values()):
            table[part] = {key: {"before": old[key], "after": new[key]} for key in ("params", "flops")}
            table[part]["ratio"] = {key: round(new[key] / old[key], 4) if old[key] else None
                                    for key in ("params", "flops")}
    return table


#: the columns of `part_rows`
PART_HEADER = ("part", "params before", "after", "after/before", "FLOPs before", "after", "after/before",
               "FLOPs share")


def part_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """Per part of the model (see PART_HEADER): where params and FLOPs were and are, and what the recipe changed;
    the share is the part's fraction of all FLOPs, before → after. Empty for reports without a `parts` table."""
    flops_unit = _giga if report["flops"]["before"] >= 1e9 else _millions  # small parts of a small model stay legible
    rows = []
    for part, entry in report.get("parts", {}).items():
        params, flops = entry["params"], entry["flops"]
        share = " → ".join(_share(flops[side], report["flops"][side]) for side in ("before", "after"))
        rows.append((part, _millions(params["before"]), _millions(params["after"]),
                     _ratio(params["before"], params["after"]), flops_unit(flops["before"]),
                     flops_unit(flops["after"]), _ratio(flops["before"], flops["after"]), share))
    return rows


def _share(flops: int, total: int) -> str:
    return f"{100 * flops / total:.1f}%" if total else "-"


def pass_cost(entry: dict[str, Any]) -> str:
    """What one pass saved, in a line: `params 2.690 M → 1.880 M (×0.699), FLOPs ...` (empty for older reports)."""
    parts = []
    for key, label, unit in (("params", "params", _millions), ("flops", "FLOPs", _giga)):
        if key in entry:
            before, after = entry[key]["before"], entry[key]["after"]
            parts.append(f"{label} {unit(before)} → {unit(after)} ({_ratio(before, after)})")
    return ", ".join(parts)


def _ratio(before: float, after: float) -> str:
    return f"×{after / before:.3f}" if before else "-"


def _giga(flops: float) -> str:
    return f"{flops / 1e9:.3f} G"


def _millions(params: float) -> str:
    return f"{params / 1e6:.3f} M"


def metric_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, before, after, change) for the task metrics `compress --eval-data` measured (top-1, AP, ...)."""
    return [(name.replace("_", " "), f"{entry['before']:.4f}", f"{entry['after']:.4f}",
             f"{entry['after'] - entry['before']:+.4f}")
            for name, entry in report.get("metrics", {}).items()
            if isinstance(entry, dict) and {"before", "after"} <= set(entry)]


def describe_metric_data(report: dict[str, Any]) -> str:
    """`Task metrics on DATA (N examples)`: where they were measured, or "" when they were not."""
    measured_on = report.get("metrics_measured_on")
    if not measured_on:
        return ""
    after = f", after: {measured_on['after']}" if measured_on.get("after") else ""
    return f"Task metrics on {measured_on['data']} ({measured_on['examples']} examples{after})"


def format_table(report: dict[str, Any]) -> str:
    """The before/after table `cli.py compress` prints."""
    rows = [("", "before", "after", "after/before")]
    rows.append(("params", _millions(report["params"]["before"]), _millions(report["params"]["after"]),
                 _ratio(report["params"]["before"], report["params"]["after"])))
    rows.append(("FLOPs", _giga(report["flops"]["before"]), _giga(report["flops"]["after"]),
                 _ratio(report["flops"]["before"], report["flops"]["after"])))
    latency = report["latency_ms"]
    rows.append(("latency", f"{latency['before']:.1f} ms", f"{latency['after']:.1f} ms",
                 _ratio(latency["before"], latency["after"])))
    for key, value in report.get("fidelity", {}).items():
        if isinstance(value, float):
            rows.append((key.replace("_", " "), "1", f"{value:.4f}", ""))
    rows += metric_rows(report)
    lines = _aligned(rows)
    if part_rows(report):
        lines += [""] + _aligned([PART_HEADER] + part_rows(report))
    for entry in report.get("passes", []):
        lines.append("")
        lines.append(f"{entry['name']} ({entry['stage']}): {len(entry['sites'])} sites")
        if pass_cost(entry):
            lines.append(f"  {pass_cost(entry)}")
        for key, value in entry.get("summary", {}).items():
            lines.append(f"  {key}: {value}")
    if report.get("distillation"):
        lines += ["", describe_distillation(report["distillation"])]
    lines.append("")
    lines.append(f"measured on {report['input']}; latency: median of {latency['runs']} interleaved runs, "
                 f"{report['environment']['threads']} threads")
    if describe_metric_data(report):
        lines.append(describe_metric_data(report) + "; for them the last column is after - before")
    return "\n".join(lines)


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """A text table: the first row a header underlined, the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def describe_distillation(summary: dict[str, Any]) -> str:
    """One line on the distill step: how much training, and the evaluation metric before and after."""
    line = f"distill: {summary['steps']} steps of batch {summary['config']['batch_size']} on {summary['data']}"
    if summary.get("eval_data") and summary.get("before"):
        name = next((metric for metric in HEADLINE.values() if metric in summary["before"]), None)
        if name is not None and summary.get("best") is not None:
            line += f"; {name} on {summary['eval_data']}: {summary['before'][name]:.4f} before, " \
                    f"{summary['best']:.4f} best (step {summary['best_step']})"
    return line
