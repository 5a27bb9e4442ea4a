"""The model card (`README.md`) of a compressed model, in the Hub's conventions.

YAML metadata first (base_model, library_name, tags, pipeline_tag), then what was done, the measured
before/after table, the resolved recipe, and how to load the model back in one line.
"""

from __future__ import annotations

from typing import Any

import yaml

from compressor.report import format_table


def _metadata(result, config: dict[str, Any]) -> dict[str, Any]:
    report = result.report
    meta: dict[str, Any] = {
        "library_name": "compressor",
        "tags": ["compressor", "model-compression", report["family"]]
        + [entry["name"] for entry in report["passes"]],
        "pipeline_tag": report["task"],
    }
    base = report["base_model"]
    if "/" in base and not base.startswith((".", "/", "~")):
        meta["base_model"] = base.removeprefix("hf-hub:")
    license_name = config.get("license") or (config.get("pretrained_cfg") or {}).get("license")
    if license_name:
        meta["license"] = license_name
    return meta


def evaluation_section(entries: list[dict[str, Any]]) -> str:
    """The `## Evaluation` section: one row per (data, examples, reference) that `evaluate` or `distill` measured."""
    if not entries:
        return ""
    rows = ["| data | examples | metrics | fidelity to reference |", "|---|---|---|---|"]
    for entry in entries:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in entry["metrics"].items() if v is not None)
        fidelity = ", ".join(f"{k} {v:.4g}" for k, v in (entry.get("fidelity") or {}).items())
        if fidelity:
            fidelity = f"{fidelity} (`{entry['reference']}`)"
        rows.append(f"| `{entry['data']}` | {entry['examples']} | {metrics} | {fidelity or '-'} |")
    return "\n## Evaluation\n\nMeasured with `python cli.py evaluate` on this model.\n\n" + "\n".join(rows) + "\n"


def distillation_section(summary: dict[str, Any] | None) -> str:
    """The `## Distillation` section of a student saved by `distill`: teacher, data, steps, before and best."""
    if not summary:
        return ""
    config = summary["config"]
    before = ", ".join(f"{k} {v:.4f}" for k, v in (summary.get("before") or {}).items() if v is not None)
    best = f"{summary['best']:.4f} at step {summary['best_step']}" if summary.get("best") is not None else \
        f"the last step ({summary['best_step']})"
    return f"""
## Distillation

Distilled from `{summary['teacher']}` on `{summary['data']}` ({summary['examples']} examples) with `python cli.py
distill`: {summary['steps']} steps of batch {config['batch_size']}, lr {config['lr']}, temperature
{config['temperature']}, weights kd {config['kd_weight']} / task {config['task_weight']} / feature
{config['feature_weight']}, seed {config['seed']}. Before distillation: {before or 'not measured'}; kept: {best}
(on `{summary.get('eval_data')}`).
"""


def render_model_card(result, config: dict[str, Any]) -> str:
    report = result.report
    passes = ", ".join(f"`{entry['name']}`" for entry in report["passes"]) or "no passes"
    front = yaml.safe_dump(_metadata(result, config), sort_keys=False).strip()
    return f"""---
{front}
---

# {report['base_model']} — compressed with {passes}

This model was produced by [compressor](https://github.com/) from `{report['base_model']}`
({report['family']}) with the recipe `{report['recipe']}` and seed {report['seed']}.

## Before and after

Measured in one run on {report['input']} (CPU, {report['environment']['threads']} threads); fidelity is the mean
cosine similarity of the model's outputs to the original's.

```
{format_table(report)}
```
{evaluation_section(report.get("evaluation", []))}{distillation_section(report.get("distillation"))}
## How to load

```python
import compressor

model = compressor.load("<this repository or directory>")
```

`compressor.load` rebuilds the architecture, replays the recipe below and loads `model.safetensors`; the outputs
equal those of the model right after compression.

## Recipe

```yaml
{result.recipe.to_yaml().rstrip()}
```
"""
