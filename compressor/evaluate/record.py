"""Write evaluation results into a compressed model's directory: `report.json` and the model card.

An entry replaces an earlier one on the same data, example count and reference, so re-running `evaluate` updates
the card rather than piling up rows. Each file is replaced atomically (written beside it, then renamed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from compressor import strict_json
from compressor.atomic_dir import write_text_atomically
from compressor.loaders.config_file import read_config
from compressor.model_card import front_matter, render_model_card
from compressor.recipe import Recipe
from compressor.serialization import RECIPE, REPORT


def _key(entry: dict[str, Any]) -> tuple:
    return entry["data"], entry["examples"], entry.get("reference")


def record_evaluation(directory: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Add `result` (from `evaluate`) to `directory`'s report.json and re-render its README.md; returns the card."""
    directory = Path(directory)
    report = json.loads((directory / REPORT).read_text())
    entry = {key: result[key] for key in ("data", "examples", "task", "metrics", "reference", "fidelity")}
    report["evaluation"] = [e for e in report.get("evaluation", []) if _key(e) != _key(entry)] + [entry]
    config = read_config(directory)
    previous = front_matter((directory / "README.md").read_text(encoding="utf-8", errors="replace")) \
        if (directory / "README.md").is_file() else {}
    if previous.get("license") and "license" not in config:  # keep the licence the first card found
        config = {**config, "license": previous["license"]}
    card = render_model_card(SimpleNamespace(report=report, recipe=Recipe.load(str(directory / RECIPE))), config)
    write_text_atomically(directory / REPORT, strict_json.dumps(report, indent=2) + "\n")
    write_text_atomically(directory / "README.md", card)
    return directory / "README.md"
