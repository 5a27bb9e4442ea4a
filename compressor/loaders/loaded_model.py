"""A model ready for passes: what every loader returns and every pass, measurement and save works on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from compressor.models.base import ModelAdapter


@dataclass
class LoadedModel:
    """A model ready for passes: the module, its adapter, and where it came from."""

    model: nn.Module
    adapter: ModelAdapter
    source: str
    #: the original (uncompressed) model this one derives from: the source itself unless it is a compress output
    base_model: str
    #: the `compression_config` of a compress output, else None
    compression: dict[str, Any] | None = None
    #: local directory the files came from (None for in-memory models)
    directory: Path | None = None
