"""On-disk cache of image embeddings, shared by every run of a sweep.

Key = hash(encoder weights, image pixels, preprocessing). Entries are written to a temporary
file and renamed into place, so parallel jobs may write the same entry at the same time.
Entries are readable by the group (and folders open to it) whatever the umask, since SLURM
users share one cache; a folder that cannot be written is named in one warning and the run
goes on without storing.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from persam.data.files import atomic_write

log = logging.getLogger(__name__)

# Permissions of cache entries and of the folders the cache creates (umask-independent).
FILE_MODE = 0o664
DIR_MODE = 0o2775

# Bump when the way images are resized or normalised before the encoder changes.
PREPROCESS_VERSION = "sam-resize-longest-side-v1"


def module_fingerprint(module: nn.Module | dict) -> str:
    """A hash of a module's parameters and buffers (or of a state dict): names, shapes, dtypes
    and values."""
    digest = hashlib.blake2b(digest_size=16)
    state = module if isinstance(module, dict) else module.state_dict()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def image_fingerprint(image: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.shape}:{image.dtype}".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0

    def as_dict(self) -> dict:
        return {"hits": self.hits, "misses": self.misses}


class EmbeddingCache:
    """A folder of `<key>.pt` files holding `{"features", "input_size", "original_size"}`."""

    def __init__(self, root: str | Path, enabled: bool = True) -> None:
        self.root = Path(root).expanduser()
        self.enabled = enabled
        self.stats = CacheStats()
        self.writable = True  # False after a failed write: the run goes on without storing

    def key(self, model_fingerprint: str, image: np.ndarray, preprocess: str) -> str:
        raw = f"{model_fingerprint}|{image_fingerprint(image)}|{preprocess}|{PREPROCESS_VERSION}"
        return hashlib.blake2b(raw.encode(), digest_size=20).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def load(self, key: str) -> dict | None:
        if not self.enabled:
            return None
        path = self._path(key)
        try:
            present = path.is_file()
        except OSError:  # an unreadable cache folder: computed, and the store warns once
            present = False
        if present:
            try:
                entry = torch.load(path, map_location="cpu", weights_only=True)
                self.stats.hits += 1
                return entry
            except Exception as exc:  # noqa: BLE001 - a broken entry is recomputed, not fatal
                log.warning(
                    "Embedding cache entry %s is unreadable (%s); recomputing it.", path, exc
                )
        self.stats.misses += 1
        return None

    def _mkdir(self, folder: Path) -> None:
        """Create `folder` (and missing parents) open to the group."""
        missing = []
        for parent in (folder, *folder.parents):
            if parent.is_dir():
                break
            missing.append(parent)
        folder.mkdir(parents=True, exist_ok=True)
        for made in reversed(missing):
            if made != self.root and self.root not in made.parents:
                continue  # folders above the cache root keep the user's permissions
            try:
                os.chmod(made, DIR_MODE)
            except OSError:  # made by another user's job meanwhile: theirs to set
                pass

    def store(self, key: str, entry: dict) -> None:
        if not self.enabled or not self.writable:
            return
        path = self._path(key)

        def write(f) -> None:
            torch.save(entry, f)
            os.fchmod(f.fileno(), FILE_MODE)  # before it is put in place; umask-independent

        try:
            self._mkdir(path.parent)
            atomic_write(path, write, binary=True)
        except OSError as exc:  # read-only, not ours, full: the run goes on without caching
            self.writable = False
            log.warning(
                "Embedding cache folder %s is not writable (%s: %s); going on without caching. "
                "Fix its permissions, point PERSAM_CACHE_DIR (or cache.root=) at a writable "
                "folder, or pass cache.enabled=false.",
                self.root,
                type(exc).__name__,
                exc.strerror or exc,
            )
