"""Progress bars of the libraries underneath (transformers' weight loading, datasets' map), switched per call.

`compress(..., progress=False)` promises a silent run; transformers and datasets draw their own bars by default,
which the CLI turns off for the whole process. From Python, only the calls that asked for silence are silenced,
and the libraries' settings are restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def library_progress_bars(enabled: bool) -> Iterator[None]:
    """Inside, transformers' and datasets' progress bars are off unless `enabled` (their settings are left alone
    then); the previous settings come back on exit."""
    if enabled:
        yield
        return
    import datasets
    from transformers.utils import logging as transformers_logging

    transformers_was_on = transformers_logging.is_progress_bar_enabled()
    datasets_was_on = datasets.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if transformers_was_on:
            transformers_logging.enable_progress_bar()
        if datasets_was_on:
            datasets.enable_progress_bars()
