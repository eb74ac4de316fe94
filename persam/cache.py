"""On-disk cache of image embeddings, shared by every run of a sweep.

Key = hash(encoder weights, image pixels, preprocessing). Entries are written to a temporary
file and renamed into place, so parallel jobs may write the same entry at the same time.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from persam.files import atomic_write

log = logging.getLogger(__name__)

# Bump when the way images are resized or normalised before the encoder changes.
PREPROCESS_VERSION = "sam-resize-longest-side-v1"


def module_fingerprint(module: nn.Module) -> str:
    """A hash of a module's parameters and buffers (names, shapes, dtypes and values)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
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

    def key(self, model_fingerprint: str, image: np.ndarray, preprocess: str) -> str:
        raw = f"{model_fingerprint}|{image_fingerprint(image)}|{preprocess}|{PREPROCESS_VERSION}"
        return hashlib.blake2b(raw.encode(), digest_size=20).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def load(self, key: str) -> dict | None:
        if not self.enabled:
            return None
        path = self._path(key)
        if path.is_file():
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

    def store(self, key: str, entry: dict) -> None:
        if not self.enabled:
            return
        atomic_write(self._path(key), lambda f: torch.save(entry, f), binary=True)
