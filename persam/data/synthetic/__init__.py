"""A procedurally drawn one-shot segmentation world, written in the PerSeg folder layout.

* :mod:`~persam.data.synthetic.identities` — object identities (shape, palette, texture), each
  fully determined by an integer seed; disjoint seed ranges per split.
* :mod:`~persam.data.synthetic.drawing` — textures, sprites, and placing them into an image.
* :mod:`~persam.data.synthetic.scene` — :func:`render_scene`: one identity among distractors
  and occluders on a cluttered background, in memory (a :class:`Scene`).
* :mod:`~persam.data.synthetic.disk` — :func:`ensure_synthetic` writes a split in the PerSeg
  layout once (the on-disk cache); :func:`synthetic_dataset` serves it as a ``PerSegDataset``.

Everything is deterministic given the seeds: only ``numpy.random.default_rng`` generators are
used, never a global RNG.
"""

from persam.data.synthetic.disk import (
    GENERATOR_VERSION,
    JPEG_QUALITY,
    ensure_synthetic,
    synthetic_dataset,
)
from persam.data.synthetic.identities import (
    FAMILIES,
    SPLITS,
    TEXTURES,
    Identity,
    identity_seed,
    make_identity,
    split_identities,
)
from persam.data.synthetic.scene import Scene, render_scene

__all__ = [
    "FAMILIES",
    "GENERATOR_VERSION",
    "JPEG_QUALITY",
    "SPLITS",
    "TEXTURES",
    "Identity",
    "Scene",
    "ensure_synthetic",
    "identity_seed",
    "make_identity",
    "render_scene",
    "split_identities",
    "synthetic_dataset",
]
