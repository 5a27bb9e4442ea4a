"""What `--overwrite` may replace: an earlier output of this toolkit, and nothing else.

Replacing a directory deletes what was in it, so the permission a user gives with `--overwrite` is read narrowly.
A directory is replaced only when it is empty or recognisably written by this toolkit (a compressed model, a sweep,
a training run), and never when it is the working directory or holds it, a home or root directory or holds one,
or the model being compressed or a directory holding it. Each refusal is one line that says what to do instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from compressor.errors import CompressorError

#: the key of config.json that marks a directory written by `compress` / `compressor.save`
COMPRESSION_KEY = "compression_config"
#: the file `sweep` writes its measurements to
SWEEP_RESULTS = "sweep.json"
#: what a training run of `distill` (or of a recipe's distill step) leaves in its directory
TRAINING_ENTRIES = ("distill.json", "log.jsonl", "checkpoints", "student", "best")


def _json_object(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def output_kind(directory: Path) -> str | None:
    """Which output of this toolkit `directory` is ("compressed model", "sweep", "training run"), or None."""
    config = _json_object(directory / "config.json")
    if config is not None and COMPRESSION_KEY in config:
        return "compressed model"
    sweep = _json_object(directory / SWEEP_RESULTS)
    if sweep is not None and "rows" in sweep:
        return "sweep"
    entries = {path.name for path in directory.iterdir()}
    student = directory / "student"
    if entries and entries <= set(TRAINING_ENTRIES) and \
            ((directory / "distill.json").is_file() or (directory / "log.jsonl").is_file()
             or (student.is_dir() and output_kind(student) == "compressed model")):
        return "training run"
    return None


def _holds(directory: Path, path: Path) -> bool:
    """True when `path` is `directory` or lies inside it (both resolved)."""
    return path == directory or directory in path.parents


def local_paths(sources: Iterable[object]) -> list[Path]:
    """The resolved local paths among `sources` (Hub ids and in-memory models are skipped)."""
    paths = []
    for source in sources:
        if isinstance(source, (str, os.PathLike)) and str(source):
            path = Path(source).expanduser()
            if path.exists():
                paths.append(path.resolve())
    return paths


def refuse_unsafe_replacement(out: Path, *, sources: Iterable[object] = ()) -> None:
    """Raise a one-line CompressorError unless replacing the existing directory `out` can only lose an earlier
    output of this toolkit (or nothing)."""
    target = Path(out).expanduser().resolve()
    shown = str(out)
    home = Path.home().resolve()
    if target == Path(target.anchor) or _holds(target, home):
        raise CompressorError(f"--overwrite refuses to replace {shown}: it is the root or a home directory, or "
                              "holds one; choose a new --out directory")
    cwd = Path.cwd().resolve()
    if _holds(target, cwd):
        where = "the current directory" if target == cwd else "a directory holding the current directory"
        raise CompressorError(f"--overwrite refuses to replace {shown}: it is {where}; choose a new --out "
                              "directory, e.g. a subdirectory")
    for source in local_paths(sources):
        if _holds(target, source):
            raise CompressorError(f"--overwrite refuses to replace {shown}: it holds the source model {source}; "
                                  "write the output somewhere else")
    if any(target.iterdir()) and output_kind(target) is None:
        raise CompressorError(f"--overwrite refuses to replace {shown}: it is not empty and not an earlier output "
                              "of this toolkit (a compressed model, a sweep or a training run); choose another "
                              "--out, or remove it yourself if it is yours to delete")
