"""Object identities of the synthetic world: a shape, a palette, a texture, all from one seed.

Each *identity* is a textured object (a shape family, a palette of 2-3 colours, a texture
pattern, optional outline and shading) fully determined by an integer seed. Identities of the
``heldout`` and ``train`` splits come from disjoint seed ranges (:func:`identity_seed`).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "FAMILIES",
    "SPLITS",
    "TEXTURES",
    "Identity",
    "hsv",
    "identity_seed",
    "make_identity",
    "split_identities",
]

FAMILIES: tuple[str, ...] = ("blob", "polygon", "star", "ring", "composite")
TEXTURES: tuple[str, ...] = ("stripes", "checker", "dots", "gradient", "noise")

#: Split -> code placed in the high bits of identity seeds: the seed ranges are disjoint.
SPLITS: dict[str, int] = {"heldout": 1, "train": 2}
_SPLIT_SHIFT = 56
_SEED_BITS = 28
#: One-off distractor identities are drawn below this seed: below every split range.
ONE_OFF_SEED_MAX = 1 << 48

Polygon = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Identity:
    """One object identity; every field is derived from ``seed`` by :func:`make_identity`.

    Attributes:
        seed: identity seed.
        family: shape family, one of :data:`FAMILIES`.
        texture: texture pattern, one of :data:`TEXTURES`.
        palette: 2-3 RGB colours (0-255).
        base_size: object diameter at scale 1, as a fraction of the image's shorter side.
        outline: whether a band of the last palette colour is drawn along the outline.
        shape: ``(fill, polygon)`` pairs in unit coordinates (the object fits in the unit disc),
            drawn in order; ``fill`` is 1 for solid parts and 0 for holes.
        texture_params: ``(angle, frequency, phase, aux)`` of the texture (see ``_texture``).
        shading: ``(strength, angle)`` of a fixed linear shading across the object.
    """

    seed: int
    family: str
    texture: str
    palette: tuple[tuple[int, int, int], ...]
    base_size: float
    outline: bool
    shape: tuple[tuple[int, Polygon], ...] = field(repr=False)
    texture_params: tuple[float, float, float, float] = field(repr=False)
    shading: tuple[float, float] = field(repr=False)


# ----------------------------------------------------------------------------- identities


def identity_seed(split: str, seed: int, index: int) -> int:
    """Seed of object ``index`` of ``split`` for dataset ``seed`` (disjoint ranges per split)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    limit = 1 << _SEED_BITS
    if not (0 <= seed < limit and 0 <= index < limit):
        raise ValueError(f"seed and index must be in [0, {limit}), got {seed}, {index}")
    return (SPLITS[split] << _SPLIT_SHIFT) | (seed << _SEED_BITS) | index


def hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def _object_palette(rng: np.random.Generator, hue: float) -> tuple[tuple[int, int, int], ...]:
    n = int(rng.integers(2, 4))
    sat = rng.uniform(0.55, 1.0)
    val = rng.uniform(0.55, 1.0)
    colours = [hsv(hue, sat, val)]
    offsets = rng.choice([0.12, 0.3, 0.5, 0.6, 0.75], size=n - 1, replace=False)
    for off in offsets:
        # alternate light/dark partners so the texture keeps contrast
        v2 = val * rng.uniform(0.35, 0.6) if rng.random() < 0.5 else rng.uniform(0.85, 1.0)
        colours.append(hsv(hue + off, rng.uniform(0.2, 1.0), v2))
    return tuple(colours)


def _regular(n: int, radius: float, phase: float, sx: float = 1.0) -> np.ndarray:
    t = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([sx * radius * np.cos(t), radius * np.sin(t)], axis=1)


def _shape(rng: np.random.Generator, family: str) -> list[tuple[int, np.ndarray]]:
    """Polygons ``(fill, Nx2 array)`` of a shape in unit coordinates (before normalisation)."""
    if family == "blob":
        t = np.linspace(0, 2 * np.pi, 160, endpoint=False)
        r = np.ones_like(t)
        for k in range(2, 6):
            r += rng.uniform(0.0, 0.22 / (k - 1) ** 0.5) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        sx = rng.uniform(0.7, 1.0)
        return [(1, np.stack([sx * r * np.cos(t), r * np.sin(t)], axis=1))]
    if family == "polygon":
        n = int(rng.integers(3, 8))
        t = rng.uniform(0, 2 * np.pi) + (np.arange(n) + rng.uniform(-0.2, 0.2, n)) * 2 * np.pi / n
        r = rng.uniform(0.75, 1.0, n)
        return [(1, np.stack([r * np.cos(t), r * np.sin(t)], axis=1))]
    if family == "star":
        n = int(rng.integers(4, 9))
        inner = rng.uniform(0.35, 0.6)
        t = rng.uniform(0, 2 * np.pi) + np.arange(2 * n) * np.pi / n
        r = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner)
        return [(1, np.stack([r * np.cos(t), r * np.sin(t)], axis=1))]
    if family == "ring":
        n = 96 if rng.random() < 0.6 else int(rng.integers(4, 7))
        sx = rng.uniform(0.75, 1.0)
        phase = rng.uniform(0, 2 * np.pi)
        outer = _regular(n, 1.0, phase, sx)
        inner = _regular(n, rng.uniform(0.4, 0.6), phase, sx) + rng.uniform(-0.08, 0.08, 2)
        return [(1, outer), (0, inner)]
    if family == "composite":
        parts: list[tuple[int, np.ndarray]] = []
        for i in range(int(rng.integers(2, 4))):
            size = rng.uniform(0.45, 0.7) if i == 0 else rng.uniform(0.3, 0.55)
            centre = (
                np.zeros(2)
                if i == 0
                else _regular(1, rng.uniform(0.35, 0.6), rng.uniform(0, 6.3))[0]
            )
            kind = rng.choice(["ellipse", "rect", "triangle"])
            if kind == "ellipse":
                p = _regular(64, size, 0.0, rng.uniform(0.5, 1.0))
            elif kind == "rect":
                p = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * [
                    size,
                    size * rng.uniform(0.4, 1.0),
                ]
            else:
                p = _regular(3, size, 0.0)
            a = rng.uniform(0, 2 * np.pi)
            rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            parts.append((1, p @ rot.T + centre))
        return parts
    raise ValueError(f"unknown shape family {family!r}; expected one of {FAMILIES}")


def _normalise(parts: list[tuple[int, np.ndarray]]) -> tuple[tuple[int, Polygon], ...]:
    """Centre the solid parts' bounding box at 0 and scale them into the unit disc."""
    solid = np.concatenate([p for fill, p in parts if fill])
    centre = (solid.min(0) + solid.max(0)) / 2
    radius = float(np.linalg.norm(solid - centre, axis=1).max())
    out = []
    for fill, p in parts:
        q = np.round((p - centre) / radius, 6)
        out.append((fill, tuple((float(x), float(y)) for x, y in q)))
    return tuple(out)


def make_identity(
    identity_seed: int, family: str | None = None, hue: float | None = None
) -> Identity:
    """Build the identity of ``identity_seed`` (deterministic).

    Args:
        identity_seed: non-negative integer seed.
        family: force the shape family (default: drawn from the seed).
        hue: force the dominant hue in [0, 1) (default: drawn from the seed).
    """
    rng = np.random.default_rng(identity_seed)
    drawn_family = str(rng.choice(FAMILIES))
    drawn_hue = float(rng.random())
    family = drawn_family if family is None else family
    if family not in FAMILIES:
        raise ValueError(f"unknown shape family {family!r}; expected one of {FAMILIES}")
    palette = _object_palette(rng, drawn_hue if hue is None else hue)
    texture = str(rng.choice(TEXTURES))
    if texture == "stripes":
        params = (rng.uniform(0, np.pi), rng.uniform(1.5, 3.5), rng.random(), 0.0)
    elif texture == "checker":
        params = (rng.uniform(0, np.pi), rng.uniform(1.5, 3.0), rng.random(), 0.0)
    elif texture == "dots":
        params = (
            rng.uniform(0, np.pi),
            rng.uniform(2.0, 3.5),
            rng.random(),
            rng.uniform(0.2, 0.38),
        )
    elif texture == "gradient":
        params = (rng.uniform(0, 2 * np.pi), 1.0, rng.random(), float(rng.random() < 0.5))
    else:  # noise
        params = (0.0, rng.uniform(2.0, 4.0), rng.random(), rng.uniform(2.0, 5.0))
    return Identity(
        seed=int(identity_seed),
        family=family,
        texture=texture,
        palette=palette,
        base_size=round(float(rng.uniform(0.38, 0.52)), 4),
        outline=bool(rng.random() < 0.45),
        shape=_normalise(_shape(rng, family)),
        texture_params=tuple(round(float(p), 6) for p in params),  # type: ignore[arg-type]
        shading=(
            round(float(rng.uniform(0.0, 0.18)), 4),
            round(float(rng.uniform(0, 2 * np.pi)), 4),
        ),
    )


def split_identities(split: str, seed: int = 0, num_objects: int = 6) -> list[Identity]:
    """The ``num_objects`` identities of ``split`` for dataset ``seed``.

    Shape families are cycled (in a seed-dependent order) and dominant hues are spread around
    the colour wheel, so that the objects of a split look clearly different from each other.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    rng = np.random.default_rng([SPLITS[split], seed, 101])
    order = [FAMILIES[i] for i in rng.permutation(len(FAMILIES))]
    hue0 = float(rng.random())
    golden = (math.sqrt(5) - 1) / 2
    return [
        make_identity(
            identity_seed(split, seed, i),
            family=order[i % len(order)],
            hue=(hue0 + i * golden) % 1.0,
        )
        for i in range(num_objects)
    ]
