"""Images decoded with their faults named: an undecodable, truncated, empty or oversized image is one line naming
the file (or the row and column of a table) and the fix, never a PIL traceback or a silently skipped example.

PIL only warns (`DecompressionBombWarning`) between `Image.MAX_IMAGE_PIXELS` and twice that; here both the warning
and `DecompressionBombError` are errors, so a file claiming 100,000 x 100,000 pixels is refused before it is
decompressed. `check_header` reads only what `Image.open` reads (format and size), a PNG's checksums and a JPEG's
last bytes, cheap enough to run over all the data before any work; `decode` does the full read.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compressor.errors import SourceError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def image_files(folder: Path) -> list[Path]:
    """The image files under `folder`, sorted, hidden files and folders (.ipynb_checkpoints, ._x.jpg) left out."""
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
                  and not any(part.startswith(".") for part in path.relative_to(folder).parts))


def stored_path(value: Any) -> str | None:
    """The file an image value was read from, when it names one that exists (a folder's image, not a table's)."""
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, (str, Path)) else None
    if isinstance(value, dict) and value.get("bytes") is not None:
        return None
    return str(path) if path and Path(path).is_file() else None


def _source(value: Any):
    """What `Image.open` takes for an image value: a path, a file of bytes, or a `datasets` {bytes, path} dict."""
    if isinstance(value, dict):
        value = value["bytes"] if value.get("bytes") is not None else value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return io.BytesIO(value)
    if isinstance(value, (str, Path)):
        return value
    raise TypeError(f"a {type(value).__name__}, not image bytes or a path")


@contextlib.contextmanager
def _opened(value: Any, where: str) -> Iterator[Any]:
    from PIL import Image

    if hasattr(value, "convert"):  # already a PIL image
        yield value
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(_source(value)) as image:
                yield image
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise SourceError(f"{where} is too large to decode ({str(error).split('.')[0]}); it may be a "
                              "decompression bomb: remove it, or resize it below "
                              f"{Image.MAX_IMAGE_PIXELS:,} pixels") from None
        except (OSError, SyntaxError, ValueError, EOFError, TypeError) as error:
            detail = " ".join(str(error).split()) or type(error).__name__
            raise SourceError(f"{where} is not a readable image ({detail}); remove it or replace it with a "
                              "valid JPEG/PNG") from None


#: how much of a JPEG's end `jpeg_is_complete` reads
JPEG_TAIL_BYTES = 64 * 1024


def _tail(value: Any, size: int) -> bytes:
    """The last `size` bytes of an image value (bytes, a path or a `datasets` {bytes, path} dict)."""
    source = _source(value)
    if isinstance(source, io.BytesIO):
        return source.getbuffer()[-size:].tobytes()
    with open(source, "rb") as file:
        file.seek(0, io.SEEK_END)
        file.seek(max(0, file.tell() - size))
        return file.read()


def jpeg_is_complete(tail: bytes) -> bool:
    """Whether a JPEG's last bytes hold its end-of-image marker (FF D9) after its last start-of-scan (FF DA).

    Entropy-coded data escapes every FF byte, so neither marker occurs inside a scan: a file cut short in its last
    scan has no FF D9 after that scan's FF DA, while a whole one does, even with bytes appended after it. An EXIF
    thumbnail's own end marker comes before the main image's scans, so it cannot pass for the image's."""
    return tail.find(b"\xff\xd9", tail.rfind(b"\xff\xda") + 1) != -1


def check_header(value: Any, where: str) -> None:
    """Refuse an image whose header cannot be read or claims too many pixels, without decoding it; a PNG's chunks
    are also checked (`verify`: their checksums, no decompression), which finds a truncated PNG, and a JPEG's end
    marker (`jpeg_is_complete`), which finds a truncated JPEG."""
    with _opened(value, where) as image:
        if image.format == "PNG":
            image.verify()
        elif image.format == "JPEG" and not hasattr(value, "convert") and \
                not jpeg_is_complete(_tail(value, JPEG_TAIL_BYTES)):
            raise SourceError(f"{where} is a truncated JPEG (it ends before its end-of-image marker); remove it or "
                              "replace it with a complete copy")


def decode(value: Any, where: str):
    """The image as an RGB PIL image, fully read (a truncated file fails here, naming `where`)."""
    with _opened(value, where) as image:
        return image.convert("RGB")
