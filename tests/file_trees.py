"""What a directory holds, byte for byte: to check that a failed or killed command wrote nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path


def tree(root: Path) -> dict[str, str]:
    """Every path under `root` with a digest of its content ("dir" for directories)."""
    return {str(path.relative_to(root)): hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            for path in sorted(root.rglob("*"))}
