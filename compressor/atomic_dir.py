"""Write an output directory all at once or not at all.

Everything is written into a hidden temporary sibling, then renamed into place, so a run that fails or is killed
leaves either no output or the previous one intact — never a half-written directory a user might load.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from compressor.errors import CompressorError


def _nearest_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def check_output_path(out: Path, overwrite: bool) -> None:
    """Fail early (before any heavy work) when `out` cannot be written."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise CompressorError(f"output {out} exists and is not a directory; choose another --out")
    if out.exists() and not overwrite:
        raise CompressorError(f"output {out} already exists; choose another --out or pass --overwrite")
    existing = _nearest_existing(out.parent)
    if not existing.is_dir():
        raise CompressorError(f"cannot write {out}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK):
        raise CompressorError(f"cannot write {out}: no write permission in {existing}")


@contextmanager
def atomic_directory(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `out`, on any error it is removed.

    Missing parent directories are created, and removed again if the write fails.
    """
    out = Path(out).absolute()
    check_output_path(out, overwrite)
    created = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        if out.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, retired / out.name)
            os.replace(staging, out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for directory in created:  # innermost first
            try:
                directory.rmdir()
            except OSError:
                break
        raise


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Replace the file `path` with `text` all at once (written beside it, then renamed)."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
