"""Write an output directory all at once or not at all.

Everything is written into a hidden temporary sibling, flushed to disk, then renamed into place, so a run that fails
or is killed (even by SIGKILL) leaves either no output or the previous one intact — never a half-written directory a
user might load. Replacing an existing directory is one atomic exchange of the two names (Linux `renameat2` with
RENAME_EXCHANGE); where that call is missing, the old directory is moved aside and back again on failure, with a
window of a few microseconds in which neither is in place. Staging directories of killed runs are removed by the
next write to the same output.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from compressor.errors import CompressorError
from compressor.output_claim import claim_output, release_output
from compressor.output_guard import refuse_unsafe_replacement

#: hidden sibling names: `.<out>.partial-<pid>-<random>` while writing, `.<out>.old-<pid>-<random>` while retiring
STAGING_KINDS = ("partial", "old")
#: write errors that mean the device (or the process's file-size limit) has no room for the output
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _nearest_existing(path: Path, out: Path) -> Path:
    while not path.exists():
        if os.path.lexists(path):
            raise CompressorError(f"cannot write {out}: {path} is a broken symbolic link or a link loop; choose "
                                  "another --out or fix the link")
        path = path.parent
    return path


def _probe_writable(directory: Path, out: Path) -> None:
    """Create and remove a hidden directory in `directory`: permission bits say nothing to root, and nothing
    about read-only mounts or /proc, so only trying tells whether the output can be written."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=directory))
    except OSError as error:
        raise CompressorError(f"cannot write {out}: {error.strerror.lower()} in {directory}; choose another --out"
                              ) from None


def check_output_path(out: Path, overwrite: bool, *, sources: Iterable[object] = ()) -> None:
    """Fail early (before any heavy work) when `out` cannot be written, or must not be replaced (`output_guard`:
    `sources` are the models the output is made from)."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise CompressorError(f"output {out} exists and is not a directory; choose another --out")
    if out.exists() and not overwrite:
        raise CompressorError(f"output {out} already exists; choose another --out or pass --overwrite")
    if out.exists():
        refuse_unsafe_replacement(out, sources=sources)
    elif os.path.lexists(out):
        raise CompressorError(f"output {out} is a broken symbolic link or a link loop; choose another --out")
    existing = _nearest_existing(out.parent, out)
    if not existing.is_dir():
        raise CompressorError(f"cannot write {out}: {existing} is a file, not a directory")
    _probe_writable(existing, out)
    if existing == out.parent:
        claim_output(out)


def _no_space_errno(error: BaseException) -> int | None:
    """The errno of a write that found no room, from an OSError or from a native writer's message (safetensors
    reports `I/O error: ... (os error 28)`); None for any other error."""
    code = error.errno if isinstance(error, OSError) else None
    if code is None:
        found = re.search(r"\(os error (\d+)\)", str(error))
        code = int(found.group(1)) if found else None
    return code if code in _NO_SPACE else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(out: Path) -> list[Path]:
    """Delete the hidden staging directories that runs killed while writing `out` left behind."""
    removed = []
    for kind in STAGING_KINDS:
        for path in out.parent.glob(f".{out.name}.{kind}-*"):
            pid_text = path.name[len(f".{out.name}.{kind}-"):].split("-", 1)[0]
            if pid_text.isdigit() and not _pid_alive(int(pid_text)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under `root`, so the rename never publishes data still in the page cache."""
    for directory, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_directory(Path(directory))


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _libc_renameat2():
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


def exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step; False when this system cannot (then nothing changed)."""
    renameat2 = _libc_renameat2()
    if renameat2 is None:
        return False
    status = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if status == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _replace_directory(staging: Path, out: Path) -> None:
    """Put `staging` at `out`, where a directory already is; the old one is deleted afterwards."""
    if exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the previous output
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
    os.replace(out, retired / out.name)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(retired / out.name, out)
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)


@contextmanager
def atomic_directory(out: str | os.PathLike, overwrite: bool = False, *,
                     sources: Iterable[object] = ()) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `out`, on any error it is removed.

    `out` may replace only an earlier output of this toolkit made from other `sources` (`check_output_path`).
    Missing parent directories are created, and removed again if the write fails.
    """
    out = Path(out).absolute()
    check_output_path(out, overwrite, sources=sources)
    created = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    claim_output(out)
    remove_stale_staging(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    try:
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp's 0700 would otherwise become the output's mode
        yield staging
        _fsync_tree(staging)
        if out.exists():
            _replace_directory(staging, out)
        else:
            os.rename(staging, out)
        _fsync_directory(out.parent)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        release_output(out)
        for directory in created:  # innermost first
            try:
                directory.rmdir()
            except OSError:
                break
        code = _no_space_errno(error)
        if code is not None:
            raise CompressorError(f"cannot write {out}: {os.strerror(code).lower()}; free space on that device or "
                                  "choose another --out (nothing was written)") from None
        raise
    release_output(out)


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
