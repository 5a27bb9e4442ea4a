"""The model card (`README.md`) of a compressed model, in the Hub's conventions.

YAML metadata first (base_model, library_name, tags, pipeline_tag, and the base model's license where it is known),
then what was done, a before/after table of everything the run measured, how to load the model in one line, and the
resolved recipe that rebuilds it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from compressor.errors import SourceError
from compressor.loaders.hub_files import hub_file
from compressor.ops.int8_format import QUANTIZATION_KEY, int8_convolutions
from compressor.report import PART_HEADER, describe_metric_data, metric_rows, part_rows, pass_cost

#: report entries shaped {"before": x, "after": y} that get their own row, in this order, with their unit
_COST_ROWS = (("params", "parameters", "M", 1e-6), ("flops", "FLOPs", "G", 1e-9), ("latency_ms", "latency", "ms", 1))


def front_matter(text: str) -> dict[str, Any]:
    """The YAML metadata block at the top of a model card, or {} when there is none or it is not valid."""
    if not text.startswith("---"):
        return {}
    block = text[3:].split("\n---", 1)[0]
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _base_card(loaded) -> dict[str, Any]:
    """The metadata of the base model's own card: beside a local model, or from the Hub (cache first); nothing
    when the card is re-rendered without the model (`loaded` None, e.g. after `evaluate`)."""
    if loaded is None:
        return {}
    if loaded.directory is not None:
        card = Path(loaded.directory) / "README.md"
        return front_matter(card.read_text(encoding="utf-8", errors="replace")) if card.is_file() else {}
    repo_id = _hub_id(loaded.base_model)
    if repo_id is None:
        return {}
    try:
        card = hub_file(repo_id, "README.md", required=False)
        return front_matter(card.read_text(encoding="utf-8")) if card is not None else {}
    except (SourceError, OSError, UnicodeDecodeError):  # no card, offline, not a Hub id: no license line then
        return {}


def _hub_id(name: str) -> str | None:
    name = name.removeprefix("hf-hub:")
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        return name
    return None


def card_metadata(result, config: dict[str, Any]) -> dict[str, Any]:
    """The YAML metadata the Hub reads: what the model derives from, what it does, under which licence."""
    report = result.report
    meta: dict[str, Any] = {}
    base = _hub_id(report["base_model"])
    if base:
        meta["base_model"] = base
    meta["library_name"] = "compressor"
    meta["tags"] = ["compressor", "model-compression", report["family"]] + [entry["name"] for entry in
                                                                            report["passes"]]
    meta["pipeline_tag"] = report["task"]
    base_card = _base_card(getattr(result, "loaded", None))
    license_name = (config.get("license") or (config.get("pretrained_cfg") or {}).get("license")
                    or base_card.get("license"))
    if license_name:
        meta["license"] = license_name
    return meta


def _number(value: float, unit: str, scale: float) -> str:
    return f"{value * scale:.3f} {unit}" if unit != "ms" else f"{value:.1f} ms"


#: what the card says of a detector's detection agreement (compressor.evaluate.fidelity.detection_agreement)
_AGREEMENT_NOTE = ("; a detector's detection agreement is the IoU of each query's box with the original's times "
                   "the overlap of their class probabilities, weighted by the original's confidence in the query")


def before_after_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measure, before, after, after/before) for everything the run measured."""
    rows = []
    for key, label, unit, scale in _COST_ROWS:
        entry = report[key]
        ratio = f"×{entry['after'] / entry['before']:.3f}" if entry["before"] else "-"
        rows.append((label, _number(entry["before"], unit, scale), _number(entry["after"], unit, scale), ratio))
    for key, value in report.get("fidelity", {}).items():
        if isinstance(value, float):
            relation = "with" if key.endswith("agreement") else "to"
            rows.append((f"{key.replace('_', ' ')} {relation} the original", "1", f"{value:.4f}", ""))
    return rows + metric_rows(report)


def markdown_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """A GitHub markdown table (the card's, and the benchmarks' that print what the card shows)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def parts_section(report: dict[str, Any]) -> str:
    """`### Where the cost is`: params and FLOPs per top-level part before and after ("" for older reports)."""
    rows = part_rows(report)
    if not rows:
        return ""
    return ("\n### Where the cost is\n\nParameters and FLOPs per top-level part of the model, on the same input; the "
            "share is the\npart's fraction of all FLOPs, before → after.\n\n" + markdown_table(rows, PART_HEADER)
            + "\n")


def _pass_lines(report: dict[str, Any]) -> str:
    lines = []
    for entry in report["passes"]:
        summary = "; ".join(f"{key} {value}" for key, value in entry.get("summary", {}).items())
        lines.append(f"- `{entry['name']}` ({entry['stage']}) on {len(entry['sites'])} sites"
                     + (f" ({pass_cost(entry)})" if pass_cost(entry) else "") + (f": {summary}" if summary else ""))
    return "\n".join(lines) or "- no passes"


def _plain_library_note(library: str, passes: str, quantization: dict | None = None) -> str:
    """What loading this repository without compressor gives (checked by the Hub-loading and int8 tests);
    `quantization`: config.json's compressed-tensors entry, if any."""
    if library == "transformers" and quantization:
        if int8_convolutions(quantization):
            return ("Its config.json describes the int8 layers as compressed-tensors does (`quantization_config`), "
                    "but compressed-tensors quantizes Linear layers only: plain `transformers` loads this model's "
                    "int8 convolution weights without their scales and cannot run it. Use `compressor.load`.")
        return ("Its config.json describes the int8 layers as compressed-tensors does (`quantization_config`): with "
                "that package installed, plain `transformers` (`AutoModel.from_pretrained`) loads them and gives the "
                "same outputs as `compressor.load` for an int8-only recipe; it does not apply the rest of the "
                "compression. Use `compressor.load` for the whole model.")
    if library == "transformers":
        return (f"Plain `transformers` (`AutoModel.from_pretrained`) also loads it, but as the uncompressed base "
                f"architecture: the compression ({passes}) is not applied and the extra weights it needs are reported "
                "as unused. Use `compressor.load` to get the compressed model.")
    return ("Plain `timm.create_model(..., pretrained=True)` does not load it (the weights hold what the compression "
            "adds); use `compressor.load`.")


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
        rows.append(f"| `{entry['data']}` | {entry['examples']} | {metrics or '-'} | {fidelity or '-'} |")
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


def _library(result, config: dict[str, Any]) -> str:
    """transformers or timm: from the model when there is one, else from the saved config's compression record."""
    loaded = getattr(result, "loaded", None)
    if loaded is not None:
        return loaded.adapter.library
    return (config.get("compression_config") or {}).get("library", "transformers")


def _metric_note(report: dict[str, Any]) -> str:
    described = describe_metric_data(report)
    return f"\n{described}; for them the last column is after − before.\n" if described else ""


#: what `compressor.load` does first, for the card of a local directory and for the card pushed to the Hub
_LOAD_LOCAL = "`compressor.load` reads the files of this local directory"
_LOAD_HUB = "`compressor.load` downloads the repository (`snapshot_download`)"
_LOAD_CALL = re.compile(r'compressor\.load\("[^"\n]*"\)')


def model_name(source: str) -> str:
    """What a model is called: the Hub id, or the last part of a local path (`../shared/data/vit-cifar10` →
    `vit-cifar10`)."""
    source = source.rstrip("/")
    hub_id = _hub_id(source)
    if hub_id and not Path(source).exists():
        return hub_id
    return Path(source).name or source


def card_for_hub(card: str, repo_id: str) -> str:
    """The card of a local directory as published to `repo_id`: its load line names the repository, which
    `compressor.load` downloads."""
    return _LOAD_CALL.sub(f'compressor.load("{repo_id}")', card).replace(_LOAD_LOCAL, _LOAD_HUB)


def render_model_card(result, config: dict[str, Any], load_as: str = "path/to/this-directory") -> str:
    """The card; `load_as` is what the load snippet names (the directory, or the Hub repository when pushed)."""
    report = result.report
    passes = ", ".join(f"`{entry['name']}`" for entry in report["passes"]) or "no passes"
    front = yaml.safe_dump(card_metadata(result, config), sort_keys=False, allow_unicode=True).strip()
    calibration = report.get("calibration")
    measured_on = report["input"] + (f"; fidelity also on {calibration['examples']} calibration examples of "
                                     f"`{calibration['data']}`" if calibration else "")
    return f"""---
{front}
---

# {model_name(report['base_model'])}, compressed with {passes}

Produced by `compressor` from `{report['base_model']}` ({report['family']}, {report['task']}) with the recipe
`{report['recipe']}` and seed {report['seed']}.

{_pass_lines(report)}

## Before and after

Measured in one run, on {measured_on} (CPU, {report['environment']['threads']} threads; latency is the median of
{report['latency_ms']['runs']} interleaved runs; fidelity is the mean cosine similarity of the outputs to the original
model's{_AGREEMENT_NOTE if any(key.endswith("detection_agreement") for key in report.get("fidelity", {})) else ""}).

{markdown_table(before_after_rows(report), ("", "before", "after", "after/before"))}
{_metric_note(report)}{parts_section(report)}
{evaluation_section(report.get("evaluation", []))}{distillation_section(report.get("distillation"))}
## How to load

```python
import compressor

model = compressor.load("{load_as}")
```

{_LOAD_LOCAL}, builds the base architecture from `config.json`, replays the resolved recipe below
and loads `model.safetensors` strictly: the outputs equal those of the model right after compression. {_plain_library_note(_library(result, config), passes, config.get(QUANTIZATION_KEY))}

## Recipe

```yaml
{result.recipe.to_yaml().rstrip()}
```

Environment: {", ".join(f"{key} {value}" for key, value in report['environment'].items())}.
"""
