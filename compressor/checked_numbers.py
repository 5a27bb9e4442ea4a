"""Numbers a user or a file gives are finite and in range, checked where they enter.

torch.manual_seed takes 0 … 2^64−1 but numpy and Python's hashing of seeds wrap or fail outside 0 … 2^32−1, so the
toolkit's seeds are held to that range everywhere; a side of 100,000 pixels would allocate tens of gigabytes before
failing; a NaN in a config.json (Python's json reads `NaN` and `Infinity`) would silently poison every output.
"""

from __future__ import annotations

import json
import math
from typing import Any

from compressor.errors import CompressorError, SourceError

MAX_SEED = 2**32 - 1
#: the largest image side or token count an --input-size may ask for
MAX_INPUT_SIDE = 8192


def check_seed(seed: Any, name: str = "--seed") -> int:
    """`seed` as an int in 0 … 2^32−1, or one line naming the range."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise CompressorError(f"{name} must be an integer from 0 to {MAX_SEED:,} (2^32 - 1), got {seed!r}")
    return seed


def check_input_side(side: int, text: str) -> int:
    if not 1 <= side <= MAX_INPUT_SIDE:
        raise CompressorError(f"--input-size {text!r}: each size must be from 1 to {MAX_INPUT_SIDE:,}")
    return side


def finite_json(text: str, where: str) -> Any:
    """json.loads, refusing NaN, Infinity and numbers too large for a float (`1e999`) with one line."""
    def refuse(literal: str) -> float:
        raise SourceError(f"{where} holds {literal}, which is not a finite number; re-save the file (a model whose "
                          "settings are not numbers cannot be trusted)")

    def finite_float(literal: str) -> float:
        value = float(literal)
        return value if math.isfinite(value) else refuse(literal)

    return json.loads(text, parse_constant=refuse, parse_float=finite_float)
