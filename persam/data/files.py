"""Atomic file writes: a file is either its old version or the complete new one, never half.

Every file the product writes that a later run reads (metrics, the embedding cache, a trained
checkpoint and its record) goes through :func:`atomic_write` or :func:`replacing`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from filelock import FileLock

__all__ = ["atomic_write", "generated_folder", "replacing", "sha256_file"]


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; it replaces ``path`` when the
    block ends without error.

    The temporary file has ``path``'s own name, inside a hidden folder beside it (so writers
    that record the file name, as ``torch.save`` does, write the same bytes). The parent folder
    is created. On any error (or Ctrl-C) the temporary folder is removed and ``path`` keeps its
    previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield folder / path.name
        os.replace(folder / path.name, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], object], binary=False) -> None:
    """Call ``write(f)`` on a new file and put it in place of ``path`` (see :func:`replacing`).

    ``binary`` opens the file in ``"wb"`` mode, else text mode with ``newline=""`` (as the csv
    module wants).
    """
    with replacing(path) as tmp:
        with open(tmp, "wb") if binary else open(tmp, "w", newline="") as f:
            write(f)


def generated_folder(
    folder: str | os.PathLike,
    is_complete: Callable[[Path], bool],
    write: Callable[[Path], object],
) -> Path:
    """Make ``folder`` with ``write(tmp)`` unless ``is_complete(folder)``; returns ``folder``.

    ``write`` fills a temporary folder beside ``folder`` (manifest included), which then
    replaces ``folder`` in one rename, under a file lock (``.<name>.lock``): concurrent runs
    generate it once, and an interrupted one never leaves a half-written folder behind (its
    leftovers are removed by the next run).
    """
    folder = Path(folder)
    if is_complete(folder):
        return folder
    root, name = folder.parent, folder.name
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{name}.lock")):
        if is_complete(folder):  # another process finished meanwhile
            return folder
        for stale in [*root.glob(f".{name}.tmp-*"), *root.glob(f".{name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # an interrupted run's (we hold the lock)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; generated data is meant to be shared
        try:
            write(tmp)
            old = None
            if folder.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=root))
                os.replace(folder, old / name)
            os.replace(tmp, folder)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return folder


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
