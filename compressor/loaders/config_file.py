"""config.json of a model directory, read and checked once, with one-line errors.

Every loader (transformers, timm, compressed outputs, the publisher) reads config.json through `read_config`, so a
missing file, a file that is not JSON and a JSON value that is not an object of settings fail with the same line
wherever they are met; NaN and infinite numbers (which Python's json accepts) are refused too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compressor.checked_numbers import finite_json
from compressor.errors import SourceError

CONFIG = "config.json"
#: what a model directory is, for the message when config.json is missing
MODEL_DIRECTORY = ("a save_pretrained directory (transformers or timm) or a directory written by "
                   "`cli.py compress`")


def read_config(directory: Path, *, expected: str = MODEL_DIRECTORY) -> dict[str, Any]:
    """The settings in `directory`/config.json; `expected` says what the directory should have been."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise SourceError(f"{directory} has no {CONFIG}: expected {expected}")
    try:
        config = finite_json(path.read_text(), str(path))
    except OSError as error:
        raise SourceError(f"{path} cannot be read ({error.strerror or type(error).__name__}); check its "
                          "permissions") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise SourceError(f"{path} is not valid JSON ({error}); re-save the model with save_pretrained") from None
    if not isinstance(config, dict):
        raise SourceError(f"{path} holds a JSON {type(config).__name__}, not an object of settings; re-save the model "
                          "with save_pretrained")
    return config
