"""JSON that every parser reads: a measurement that came out NaN or infinite is written as null.

Python's json writes `NaN` and `Infinity`, which are not JSON: JavaScript's JSON.parse, jq and most other readers
refuse the whole report. Every report, log and summary the toolkit writes goes through `dumps`.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_null(value: Any) -> Any:
    """`value` with every non-finite float inside it replaced by None (containers are copied, not changed)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """json.dumps of `value` as strict JSON (see the module docstring)."""
    return json.dumps(finite_or_null(value), allow_nan=False, **options)
