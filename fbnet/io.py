"""The one atomic-write helper: write beside the target, fsync, rename over it.

A reader (another process, a torchrun rank, a resumed agent) sees either the old file or the new
one, never half of one; a crash mid-write leaves the old file and a stray ``*.tmp`` at worst.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parents are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_target(path: str | os.PathLike) -> Path:
    """A fresh temporary folder beside ``path`` for writers that produce a file tree (``os.replace``
    the result onto ``path`` when it is complete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp"))


__all__ = ["atomic_target", "atomic_write"]
