"""Atomic file replacement for the kit's on-disk caches (compiled kernels, tuning tables).

A temporary file in the target's directory is written, flushed to disk and renamed over the
target (``os.replace`` is atomic within a file system): concurrent writers race only on which
complete file wins, and a reader sees the old complete file or the new one, never a torn write.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic"]


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`; the temporary file is removed if anything fails."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; a cache built as root (at image build) must be readable when serving
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
