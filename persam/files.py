"""Atomic file writes: a file is either its old version or the complete new one, never half.

Every file the product writes that a later run reads (metrics, the embedding cache, a trained
checkpoint and its record) goes through :func:`atomic_write`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], object], binary=False) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it into place.

    The parent folder is created. On any error (or Ctrl-C) the temporary file is removed and
    ``path`` keeps its previous content. ``binary`` opens the file in ``"wb"`` mode, else text
    mode with ``newline=""`` (as the csv module wants).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
