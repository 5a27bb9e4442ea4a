"""One run at a time per output directory.

Two runs writing the same `--out` at once would each compress for minutes and then replace the other's result.
The first claims the output with an exclusive lock on a hidden sibling file (`.<out>.lock`, flock, so a killed run
never leaves a lock that holds); the second is refused up front with one line. The claim lasts until the output
is written (or the command ends), and the lock file is removed then.
"""

from __future__ import annotations

import atexit
import fcntl
import os
from pathlib import Path

from compressor.errors import CompressorError

#: claims this process holds: output path → open lock file descriptor
_held: dict[Path, int] = {}


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def claim_output(out: Path) -> None:
    """Hold the exclusive claim on `out` (whose parent exists); a claim this process already holds is kept."""
    out = Path(out).absolute()
    if out in _held:
        return
    path = lock_path(out)
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise CompressorError(f"another run is writing {out} right now; wait for it to finish or choose "
                                  "another --out") from None
        try:  # a run that just released removed the file we opened: lock the current one instead
            same = os.fstat(descriptor).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            _held[out] = descriptor
            return
        os.close(descriptor)


def release_output(out: Path) -> None:
    """Give up the claim on `out` and remove its lock file (no-op when not held)."""
    out = Path(out).absolute()
    descriptor = _held.pop(out, None)
    if descriptor is None:
        return
    try:
        lock_path(out).unlink(missing_ok=True)
    finally:
        os.close(descriptor)


def release_all() -> None:
    for out in list(_held):
        release_output(out)


atexit.register(release_all)
