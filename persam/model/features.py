"""Image features a method matches references with: a common interface over SAM's own image
embedding (`SAMFeatures`, the default: today's behaviour) and DINOv2's patch tokens
(`persam.backbones.dinov2.DINOv2Features`). Both map an RGB uint8 image (H, W, 3) to `Tokens`
(h*w, C) on their grid, computed once per image through the embedding cache.
"""

from __future__ import annotations

import numpy as np

from persam.backbones.dinov2 import Tokens
from persam.model.encoder import Encoder


class SAMFeatures:
    """SAM's image embedding (1, C, h, w) as tokens (h*w, C): `conf/features/sam.yaml`.

    Built with the method's `Encoder` (`encoder=`), so the embedding is the one SAM decodes from
    (and shares its cache entry).
    """

    kind = "sam"

    def __init__(self, encoder: Encoder, name: str = "sam") -> None:
        self.encoder = encoder
        self.name = name

    def __call__(self, image: np.ndarray) -> Tokens:
        emb = self.encoder(image).features[0]
        c, h, w = emb.shape
        return Tokens(emb.reshape(c, h * w).t().float().cpu().contiguous(), (h, w))
