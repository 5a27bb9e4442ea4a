"""Build the toolkit's small C++ kernels on first use and load them with ctypes — or say that they cannot be.

The kernels (in `compressor/ops/csrc/`) use no Python or torch headers, so one compiler call builds one in about a
second; building on first use keeps `pip install` pure Python, and a machine without a compiler still works: every
caller has a torch implementation that gives the same results, only slower. Built libraries are cached under
`$COMPRESSOR_CACHE/native` (default `~/.cache/compressor/native`), named after a hash of the source, the flags, the
compiler and the CPU, and moved into place atomically, so parallel processes can race to build one safely.
Set `COMPRESSOR_NATIVE=0` to turn the kernels off, `CXX` to choose the compiler.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).resolve().parent / "csrc"
#: tried in order: optimised for this CPU with OpenMP threads, then without OpenMP (e.g. Apple clang). Not
#: without -march=native: built for a baseline CPU, the kernel floors codes through libm calls and runs slower
#: than the torch path it replaces.
FLAG_SETS = (("-O3", "-march=native", "-fopenmp"), ("-O3", "-march=native"))
COMMON_FLAGS = ("-std=c++17", "-shared", "-fPIC", "-Wno-psabi")
BUILD_TIMEOUT_S = 300

_lock = threading.Lock()


def native_enabled() -> bool:
    """False when the user turned the kernels off (COMPRESSOR_NATIVE=0/false/no/off)."""
    return os.environ.get("COMPRESSOR_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def default_cache_dir() -> Path:
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("COMPRESSOR_CACHE") or cache_home / "compressor") / "native"


def find_compiler() -> str | None:
    """The C++ compiler to use: $CXX, else the first of g++, c++, clang++ on PATH."""
    if os.environ.get("CXX"):
        return os.environ["CXX"]
    return next((found for name in ("g++", "c++", "clang++") if (found := shutil.which(name))), None)


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's feature flags where Linux tells them, else the machine name."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {platform.system()} {flags.strip()}"


def build_library(name: str, compiler: str, cache_dir: Path) -> Path | None:
    """Compile `csrc/<name>.cpp` into `cache_dir` (or find it built already); None, with one warning, when no
    flag set compiles or the cache cannot be written."""
    source = SOURCE_DIR / f"{name}.cpp"
    source_bytes = source.read_bytes()
    errors = []
    for flags in FLAG_SETS:
        signature = "\n".join([compiler, " ".join(flags + COMMON_FLAGS), _cpu_signature()])
        digest = hashlib.sha256(source_bytes + signature.encode()).hexdigest()[:16]
        library = cache_dir / f"{name}-{digest}.so"
        if library.exists():
            return library
        try:
            error = _compile(source, library, [compiler, *flags, *COMMON_FLAGS])
        except OSError as failure:  # the cache directory cannot be created or written
            errors.append(f"{cache_dir}: {failure}")
            break
        if error is None:
            return library
        errors.append(f"{' '.join(flags)}: {error}")
    logger.warning("could not build the native kernel %s with %s (%s); using the torch implementation "
                   "(same results, slower)", name, compiler, "; ".join(errors))
    return None


def _compile(source: Path, library: Path, command: list[str]) -> str | None:
    """Compile `source` into `library` through a temporary file in the same directory (moved into place only
    when complete); the compiler's last line of complaint, or None on success."""
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent, prefix=f".{library.stem}-") as work:
        partial = Path(work) / library.name
        try:
            result = subprocess.run([*command, str(source), "-o", str(partial)], capture_output=True, text=True,
                                    timeout=BUILD_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as error:
            return str(error)
        if result.returncode != 0:
            return (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        os.replace(partial, library)
        return None


@functools.lru_cache(maxsize=None)
def _load(name: str, compiler: str | None, cache_dir: Path) -> ctypes.CDLL | None:
    if compiler is None:
        logger.info("no C++ compiler found (set CXX); native kernel %s unavailable, using the torch implementation",
                    name)
        return None
    library = build_library(name, compiler, cache_dir)
    if library is None:
        return None
    try:
        return ctypes.CDLL(str(library))
    except OSError as error:
        logger.warning("could not load the native kernel %s (%s); using the torch implementation", library, error)
        return None


@functools.lru_cache(maxsize=None)
def native_function(library: str, name: str, argtypes: tuple) -> Callable[..., int] | None:
    """The C function `name` (returning int) of `csrc/<library>.cpp` with its argument types, or None when the
    library is turned off or cannot be built (read once per process)."""
    loaded = native_library(library)
    if loaded is None:
        return None
    function = getattr(loaded, name)
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


def native_library(name: str) -> ctypes.CDLL | None:
    """The loaded library of `csrc/<name>.cpp`, built on first use; None when turned off or it cannot be built."""
    if not native_enabled():
        return None
    with _lock:
        return _load(name, find_compiler(), default_cache_dir())
