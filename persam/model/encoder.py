"""Paper section 3.1 (first step) — the frozen SAM image encoder, with an embedding cache.

`Encoder(sam, cache)(image)` returns the image's `Embedding` (features 1 x C x h x w, the
resized input size and the original size), computing it once per (weights, image,
preprocessing) when a cache is given. `Encoder.load_into(predictor, embedding)` makes a
`segment_anything.SamPredictor` answer prompts for that image without re-encoding it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam

from persam.model.cache import EmbeddingCache, module_fingerprint


@dataclass
class Embedding:
    features: torch.Tensor  # 1 x C x h x w
    input_size: tuple[int, int]  # (h, w) after ResizeLongestSide
    original_size: tuple[int, int]  # (H, W)
    # More image state a backbone's predictor needs (its `cached_state` attributes, e.g. SAM 2's
    # high-resolution features): name -> tensor or list of tensors.
    extra: dict = field(default_factory=dict)


class Encoder:
    """Encodes RGB uint8 images (H, W, 3) with `sam.image_encoder`, through the cache."""

    def __init__(self, sam: Sam, cache: EmbeddingCache | None = None) -> None:
        self.sam = sam
        # A backbone whose encoder reads the image differently names its predictor subclass.
        self.predictor = getattr(sam, "predictor_class", SamPredictor)(sam)
        self.cache = cache
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            # A backbone whose embedding depends on more than its image encoder says so.
            state = getattr(self.sam, "embedding_state", None)
            self._fingerprint = module_fingerprint(
                state() if state is not None else self.sam.image_encoder
            )
        return self._fingerprint

    def preprocess_id(self) -> str:
        sam = self.sam
        mean = sam.pixel_mean.flatten().tolist()
        std = sam.pixel_std.flatten().tolist()
        key = f"size={sam.image_encoder.img_size}|mean={mean}|std={std}|format={sam.image_format}"
        if getattr(sam, "encoder_input_size", None) is not None:
            key += f"|encoder_input={sam.encoder_input_size}"
        if getattr(sam, "preprocess_tag", None):
            key += f"|{sam.preprocess_tag}"
        return key

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Embedding:
        key = None
        if self.cache is not None and self.cache.enabled:
            key = self.cache.key(self.fingerprint, image, self.preprocess_id())
            entry = self.cache.load(key)
            if entry is not None:
                return Embedding(
                    features=entry["features"].to(self.sam.device),
                    input_size=tuple(entry["input_size"]),
                    original_size=tuple(entry["original_size"]),
                    extra=_to(entry.get("extra", {}), self.sam.device),
                )
        self.predictor.set_image(image)
        emb = Embedding(
            features=self.predictor.features,
            input_size=tuple(self.predictor.input_size),
            original_size=tuple(self.predictor.original_size),
            extra={
                n: getattr(self.predictor, n) for n in getattr(self.predictor, "cached_state", ())
            },
        )
        if key is not None:
            entry = {
                "features": emb.features.cpu(),
                "input_size": list(emb.input_size),
                "original_size": list(emb.original_size),
            }
            if emb.extra:
                entry["extra"] = _to(emb.extra, "cpu")
            self.cache.store(key, entry)
        return emb

    def load_into(self, predictor: SamPredictor, emb: Embedding) -> SamPredictor:
        """Set `predictor`'s image state to `emb`, as `set_image` would."""
        predictor.reset_image()
        predictor.features = emb.features
        predictor.input_size = emb.input_size
        predictor.original_size = emb.original_size
        for name, value in emb.extra.items():
            setattr(predictor, name, value)
        predictor.is_image_set = True
        return predictor

    def set_image(self, image: np.ndarray) -> SamPredictor:
        """Encode `image` (cached) and return the predictor holding it."""
        return self.load_into(self.predictor, self(image))


def _to(extra: dict, device) -> dict:
    """Move an `Embedding.extra` (tensors or lists of tensors) to `device`."""
    return {
        k: [t.to(device) for t in v] if isinstance(v, list | tuple) else v.to(device)
        for k, v in extra.items()
    }
