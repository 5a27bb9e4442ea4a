"""Scratch memory reused across calls, for large intermediates that never leave a function.

A fresh multi-megabyte CPU tensor often comes straight from the OS (glibc serves big blocks by mmap and hands
them back on free), and the first touch of every 4 KiB page then faults and zero-fills: for ACT's hash codes at
the DETR-DC5 encoder's size that is about a thousand page faults per forward, a millisecond of pure overhead.
Keeping one buffer per purpose, thread, dtype and device and handing out views of it avoids that. A buffer grows
to the largest request seen and is kept until `release_scratch`; per thread, so concurrent forwards never share
one, and per purpose, so intermediates that are alive at the same time never share one either.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

_buffers = threading.local()


def scratch(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, purpose: str = "") -> Tensor:
    """An uninitialised tensor of `shape` viewing this thread's scratch buffer for (purpose, dtype, device).

    Valid until the next `scratch` call with the same purpose, dtype and device on this thread: use it for an
    intermediate that is consumed before its purpose comes round again (name the purpose after the
    intermediate). The buffer is a normal tensor (created outside inference mode), so it can be written in
    place with or without inference mode.
    """
    numel = 1
    for size in shape:
        numel *= size
    pool = _buffers.__dict__.setdefault("pool", {})
    buffer = pool.get((purpose, dtype, device))
    if buffer is None or buffer.numel() < numel:
        with torch.inference_mode(False):
            buffer = pool[(purpose, dtype, device)] = torch.empty(numel, dtype=dtype, device=device)
    return buffer[:numel].view(shape)


def fresh_or_scratch(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                     purpose: str | None) -> Tensor:
    """A new uninitialised tensor when `purpose` is None (the caller may keep it), else `scratch` of that purpose."""
    if purpose is None:
        return torch.empty(shape, dtype=dtype, device=device)
    return scratch(shape, dtype, device, purpose)


def release_scratch() -> None:
    """Free this thread's scratch buffers (they are re-created on demand)."""
    _buffers.__dict__.pop("pool", None)
