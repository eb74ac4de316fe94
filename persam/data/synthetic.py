"""A procedurally drawn one-shot segmentation world, written in the PerSeg folder layout.

Each *identity* is a textured object (a shape family, a palette of 2-3 colours, a texture
pattern, optional outline and shading) fully determined by an integer seed. A *scene* shows one
identity (the target) at a random position, scale (0.6-1.4x), rotation and colour/brightness
jitter, on a cluttered textured background with distractor objects of other identities behind
it and a few small occluders in front (the target always stays mostly visible).

Two uses:

* :func:`ensure_synthetic` writes ``root/<split>/Images/<obj>/NN.jpg`` and
  ``root/<split>/Annotations/<obj>/NN.png`` (PerSeg convention), so the product runs with no
  download. Identities of the ``heldout`` and ``train`` splits come from disjoint seed ranges.
* :func:`render_scene` renders scenes in memory (training data for identity-matching features),
  with :func:`split_identities` giving the identities of a split.

Everything is deterministic given the seeds: only ``numpy.random.default_rng`` generators are
used, never a global RNG.
"""

from __future__ import annotations

import colorsys
import functools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from filelock import FileLock

__all__ = [
    "FAMILIES",
    "GENERATOR_VERSION",
    "SPLITS",
    "TEXTURES",
    "Identity",
    "ensure_synthetic",
    "identity_seed",
    "make_identity",
    "render_scene",
    "split_identities",
]

#: Bump whenever the drawn pixels change for the same parameters (forces regeneration).
GENERATOR_VERSION = 1

FAMILIES: tuple[str, ...] = ("blob", "polygon", "star", "ring", "composite")
TEXTURES: tuple[str, ...] = ("stripes", "checker", "dots", "gradient", "noise")

#: Split -> code placed in the high bits of identity seeds: the seed ranges are disjoint.
SPLITS: dict[str, int] = {"heldout": 1, "train": 2}
_SPLIT_SHIFT = 56
_SEED_BITS = 28
_ONE_OFF_SEED_MAX = 1 << 48  # one-off distractor identities: below every split range

_SPRITE = 384  # side of the canonical sprite (pixels)
_ONE_OFF_SPRITE = 192  # cheaper sprites for one-off distractors and occluders
_UNIT_FRACTION = 0.46  # sprite pixels per unit radius / sprite side (shapes fit the unit disc)
_MIN_SIDE, _MAX_SIDE = 320, 640
_MIN_ASPECT, _MAX_ASPECT = 0.6, 1.7  # width / height
_JPEG_QUALITY = 95
_FG_BGR = (0, 0, 128)  # PerSeg annotation foreground, as written by cv2 (BGR)

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


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def _object_palette(rng: np.random.Generator, hue: float) -> tuple[tuple[int, int, int], ...]:
    n = int(rng.integers(2, 4))
    sat = rng.uniform(0.55, 1.0)
    val = rng.uniform(0.55, 1.0)
    colours = [_hsv(hue, sat, val)]
    offsets = rng.choice([0.12, 0.3, 0.5, 0.6, 0.75], size=n - 1, replace=False)
    for off in offsets:
        # alternate light/dark partners so the texture keeps contrast
        v2 = val * rng.uniform(0.35, 0.6) if rng.random() < 0.5 else rng.uniform(0.85, 1.0)
        colours.append(_hsv(hue + off, rng.uniform(0.2, 1.0), v2))
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


# ----------------------------------------------------------------------------- drawing


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Smooth value noise in [0, 1], shape (h, w), with about ``cells`` cells on the long side."""
    long = max(h, w)
    gh = max(2, int(round(cells * h / long)) + 2)
    gw = max(2, int(round(cells * w / long)) + 2)
    grid = rng.random((gh, gw)).astype(np.float32)
    field_ = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(field_.min()), float(field_.max())
    return (field_ - lo) / max(hi - lo, 1e-6)


def _ramp(colours: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Piecewise-linear blend through ``colours`` (n x 3) for ``t`` in [0, 1]."""
    n = len(colours)
    pos = np.clip(t, 0.0, 1.0).astype(np.float32) * np.float32(n - 1)
    i0 = np.minimum(pos.astype(np.int64), n - 2)
    fr = (pos - i0.astype(np.float32))[..., None]
    return colours[i0] * (1 - fr) + colours[i0 + 1] * fr


def _texture(
    kind: str,
    u: np.ndarray,
    v: np.ndarray,
    palette: Sequence[Sequence[int]],
    params: Sequence[float],
    rng: np.random.Generator,
) -> np.ndarray:
    """RGB float32 texture (H x W x 3) over the coordinate grids ``u``, ``v`` (H x W)."""
    angle, freq, phase, aux = params
    cols = np.asarray(palette, dtype=np.float32)
    ca, sa = math.cos(angle), math.sin(angle)
    x = u * ca + v * sa
    y = -u * sa + v * ca
    if kind == "plain":
        return np.broadcast_to(cols[0], u.shape + (3,)).astype(np.float32)
    if kind == "stripes":
        idx = np.floor(x * freq + phase).astype(np.int64) % len(cols)
        return cols[idx]
    if kind == "checker":
        idx = (np.floor(x * freq + phase) + np.floor(y * freq + phase)).astype(np.int64) % 2
        return cols[idx]
    if kind == "dots":
        gx, gy = x * freq + phase, y * freq + phase
        cx, cy = np.floor(gx), np.floor(gy)
        inside = (gx - cx - 0.5) ** 2 + (gy - cy - 0.5) ** 2 < aux**2
        dot = 1 + (cx + cy).astype(np.int64) % max(1, len(cols) - 1)
        return np.where(inside[..., None], cols[np.minimum(dot, len(cols) - 1)], cols[0])
    if kind == "gradient":
        t = np.sqrt(u**2 + v**2) if aux > 0.5 else (x + 1.0) / 2.0
        return _ramp(cols, t + (phase - 0.5) * 0.3)
    if kind == "noise":
        span = float(max(u.max() - u.min(), v.max() - v.min()))
        n = _smooth_noise(rng, u.shape[0], u.shape[1], freq * span / 2)
        return _ramp(cols, (n - 0.5) * aux + 0.5)
    raise ValueError(f"unknown texture {kind!r}")


def _render_sprite(identity: Identity, side: int = _SPRITE) -> np.ndarray:
    """Canonical RGBA sprite (uint8, side x side x 4) of an identity, unit radius =
    ``_UNIT_FRACTION * side`` pixels; the texture covers the whole sprite (also outside the
    shape, so that bilinear warping leaves no dark fringe)."""
    s = side
    unit = _UNIT_FRACTION * side
    mask = np.zeros((s, s), np.uint8)
    for fill, poly in identity.shape:
        pts = np.round((np.asarray(poly) * unit + s / 2) * 16).astype(np.int32)
        cv2.fillPoly(mask, [pts], 255 if fill else 0, lineType=cv2.LINE_AA, shift=4)
    coords = (np.arange(s, dtype=np.float32) - s / 2) / unit
    u, v = np.meshgrid(coords, coords)
    rng = np.random.default_rng([identity.seed, 7])
    rgb = _texture(identity.texture, u, v, identity.palette, identity.texture_params, rng)
    if identity.outline:
        width = max(2, int(0.06 * unit))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
        solid = (mask >= 128).astype(np.uint8)
        band = (cv2.dilate(solid, kernel) > 0) & (cv2.erode(solid, kernel) == 0)
        colour = np.asarray(identity.palette[-1], np.float32)
        if len(identity.palette) < 3:
            colour = colour * 0.45
        rgb = np.where(band[..., None], colour, rgb)
    strength, sh_angle = identity.shading
    shade = 1.0 + strength * (u * math.cos(sh_angle) + v * math.sin(sh_angle))
    rgb = np.clip(rgb * shade[..., None], 0, 255)
    return np.dstack([np.round(rgb).astype(np.uint8), mask])


@functools.lru_cache(maxsize=64)
def _cached_sprite(identity: Identity) -> np.ndarray:
    sprite = _render_sprite(identity)
    sprite.setflags(write=False)
    return sprite


def _warp(
    sprite: np.ndarray,
    centre: tuple[float, float],
    diameter: float,
    angle: float,
    hw: tuple[int, int],
) -> tuple[tuple[int, int], np.ndarray] | None:
    """Place a sprite in an image of size ``hw``; returns ``((y0, x0), rgba float32 patch)``."""
    h, w = hw
    unit = _UNIT_FRACTION * sprite.shape[0]
    scale = diameter / 2 / unit
    while scale < 0.6 and sprite.shape[0] > 48:  # mip-map: avoid aliasing when shrinking
        sprite = cv2.pyrDown(sprite)
        unit /= 2
        scale *= 2
    half_side = sprite.shape[0] / 2
    cx, cy = centre
    half = diameter / 2 + 2
    x0, x1 = max(0, math.floor(cx - half)), min(w, math.ceil(cx + half) + 1)
    y0, y1 = max(0, math.floor(cy - half)), min(h, math.ceil(cy + half) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    m = np.array(
        [
            [c, -s, cx - x0 - (c - s) * half_side],
            [s, c, cy - y0 - (s + c) * half_side],
        ],
        dtype=np.float64,
    )
    patch = cv2.warpAffine(
        sprite,
        m,
        (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return (y0, x0), patch.astype(np.float32)


def _blend(
    img: np.ndarray, placed: tuple[tuple[int, int], np.ndarray], gain: np.ndarray, bias: np.ndarray
) -> None:
    """Alpha-composite a warped patch onto ``img`` (float32 H x W x 3, in place), after a
    colour jitter ``patch * gain + bias``."""
    (y0, x0), patch = placed
    ph, pw = patch.shape[:2]
    alpha = patch[..., 3:4] / 255.0
    colour = np.clip(patch[..., :3] * gain + bias, 0, 255)
    roi = img[y0 : y0 + ph, x0 : x0 + pw]
    roi *= 1 - alpha
    roi += alpha * colour


def _full_mask(placed: tuple[tuple[int, int], np.ndarray], hw: tuple[int, int]) -> np.ndarray:
    """Bool H x W mask (alpha >= 0.5) of a warped patch."""
    (y0, x0), patch = placed
    mask = np.zeros(hw, bool)
    mask[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] = patch[..., 3] >= 127.5
    return mask


def _colour_jitter(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    gain = np.float32(rng.uniform(0.85, 1.15)) * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    bias = rng.uniform(-10, 10, 3).astype(np.float32)
    return gain, bias


def _sample_size(rng: np.random.Generator) -> tuple[int, int]:
    """(height, width) with sides in [320, 640] and aspect (w/h) in [0.6, 1.7], never square."""
    while True:
        h = int(rng.integers(_MIN_SIDE, _MAX_SIDE + 1))
        aspect = math.exp(rng.uniform(math.log(_MIN_ASPECT), math.log(_MAX_ASPECT)))
        w = int(round(h * aspect))
        if _MIN_SIDE <= w <= _MAX_SIDE and abs(aspect - 1.0) > 0.05:
            return h, w


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Cluttered textured background, float32 H x W x 3 (0..255).

    The textured surfaces are drawn at half resolution and upsampled (cheap, and slightly
    out of focus like a real background); the clutter is drawn at full resolution.
    """
    short = min(h, w)
    hh, hw = (h + 1) // 2, (w + 1) // 2
    xs = (np.arange(hw, dtype=np.float32) * 2 - w / 2) / (short / 2)
    ys = (np.arange(hh, dtype=np.float32) * 2 - h / 2) / (short / 2)
    u, v = np.meshgrid(xs, ys)

    def region() -> np.ndarray:
        hue = rng.random()
        pal = [
            _hsv(hue + rng.uniform(-0.15, 0.15), rng.uniform(0.05, 0.6), rng.uniform(0.25, 0.95))
            for _ in range(int(rng.integers(2, 4)))
        ]
        kind = str(rng.choice(["noise", "stripes", "checker", "gradient", "dots", "plain"]))
        params = (rng.uniform(0, np.pi), rng.uniform(1.0, 6.0), rng.random(), rng.uniform(0.2, 0.4))
        if kind == "noise":
            params = (0.0, rng.uniform(1.5, 5.0), 0.0, rng.uniform(1.0, 3.0))
        tex = _texture(kind, u, v, pal, params, rng)
        mean = tex.reshape(-1, 3).mean(0)
        contrast = np.float32(rng.uniform(0.25, 0.8))
        tex = mean + contrast * (tex - mean)
        # large-scale stains / lighting variation
        stain = _smooth_noise(rng, hh, hw, rng.uniform(2, 5))
        return tex * (0.8 + 0.35 * stain[..., None])

    img = region()
    if rng.random() < 0.5:  # a second surface (wall / table) below a slanted line
        other = region()
        y_line = rng.uniform(0.3, 0.7) * hh + rng.uniform(-0.2, 0.2) * (np.arange(hw) - hw / 2)
        below = np.arange(hh)[:, None] > y_line[None, :]
        img = np.where(below[..., None], other, img)
    img = cv2.resize(img.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)

    # small flat clutter: ellipses, boxes, strokes
    for _ in range(int(rng.integers(6, 16))):
        colour = tuple(
            float(c) for c in _hsv(rng.random(), rng.uniform(0, 0.8), rng.uniform(0.15, 1.0))
        )
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = int(rng.uniform(0.02, 0.1) * short) + 2
        kind = rng.integers(0, 3)
        if kind == 0:
            axes = (size, int(size * rng.uniform(0.3, 1.0)) + 1)
            cv2.ellipse(
                img, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA
            )
        elif kind == 1:
            box = (
                (cx, cy),
                (2 * size, int(2 * size * rng.uniform(0.3, 1.0)) + 1),
                float(rng.uniform(0, 180)),
            )
            pts = cv2.boxPoints(box).astype(np.int32)
            cv2.fillPoly(img, [pts], colour, lineType=cv2.LINE_AA)
        else:
            a = rng.uniform(0, np.pi)
            d = np.array([math.cos(a), math.sin(a)]) * size * 2
            p0 = (int(cx - d[0]), int(cy - d[1]))
            p1 = (int(cx + d[0]), int(cy + d[1]))
            cv2.line(img, p0, p1, colour, int(rng.integers(2, 6)), cv2.LINE_AA)
    return img


def _random_pose(
    rng: np.random.Generator, hw: tuple[int, int]
) -> tuple[tuple[float, float], float]:
    h, w = hw
    return (float(rng.uniform(0, w)), float(rng.uniform(0, h))), float(rng.uniform(0, 2 * np.pi))


def render_scene(
    identity: Identity,
    rng: np.random.Generator,
    size: tuple[int, int] | None = None,
    distractors: int = 4,
    distractor_pool: Sequence[Identity] = (),
    max_occluders: int = 2,
    max_occlusion: float = 0.15,
    distractor_labels: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one scene of ``identity`` in memory.

    Args:
        identity: the target object.
        rng: source of all randomness of the scene (e.g. ``np.random.default_rng(...)``).
        size: ``(height, width)``; default: drawn (sides 320..640, aspect w/h 0.6..1.7).
        distractors: number of distractor objects drawn behind the target. Each is, with
            probability 0.35, taken from ``distractor_pool`` (minus the target) when that is
            non-empty, else a one-off random identity (never one of a split's identities).
        distractor_pool: identities that may appear as distractors.
        max_occluders: at most this many small objects are drawn in front of the target.
        max_occlusion: occluders may hide at most this fraction of the target's area.
        distractor_labels: also return the visible pixels of every distractor (training data
            for promptable segmentation of more than the target). Draws nothing differently.

    Returns:
        ``(image, mask)``: RGB uint8 H x W x 3 and bool H x W (the visible target pixels);
        with ``distractor_labels``, ``(image, mask, labels)``: uint8 H x W, ``k`` (1-based) on
        the visible pixels of the k-th distractor drawn, 0 elsewhere.
    """
    h, w = size if size is not None else _sample_size(rng)
    short = min(h, w)
    img = _background(rng, h, w)
    pool = [p for p in distractor_pool if p.seed != identity.seed]

    # target pose first (so distractor sizes can follow it); fully inside the image
    scale = rng.uniform(0.6, 1.4)
    diameter = float(np.clip(identity.base_size * short * scale, 0.15 * short, 0.85 * short))
    r = diameter / 2
    centre = (float(rng.uniform(r, w - r)), float(rng.uniform(r, h - r)))
    angle = float(rng.uniform(0, 2 * np.pi))

    labels = np.zeros((h, w), np.uint8) if distractor_labels else None
    for k in range(distractors):
        if pool and rng.random() < 0.35:
            other = pool[int(rng.integers(len(pool)))]
            sprite = _cached_sprite(other)
        else:
            sprite = _render_sprite(
                make_identity(int(rng.integers(_ONE_OFF_SEED_MAX))), _ONE_OFF_SPRITE
            )
        d_centre, d_angle = _random_pose(rng, (h, w))
        placed = _warp(sprite, d_centre, diameter * rng.uniform(0.5, 1.2), d_angle, (h, w))
        if placed is not None:
            _blend(img, placed, *_colour_jitter(rng))
            if labels is not None:  # later objects cover earlier ones
                labels[_full_mask(placed, (h, w))] = k + 1

    placed = _warp(_cached_sprite(identity), centre, diameter, angle, (h, w))
    assert placed is not None  # the target lies inside the image
    _blend(img, placed, *_colour_jitter(rng))
    full = _full_mask(placed, (h, w))
    visible = full.copy()
    min_visible = (1.0 - max_occlusion) * int(full.sum())

    for _ in range(int(rng.integers(0, max_occluders + 1))):
        sprite = _render_sprite(
            make_identity(int(rng.integers(_ONE_OFF_SEED_MAX))), _ONE_OFF_SPRITE
        )
        o_diameter = diameter * rng.uniform(0.25, 0.5)
        for _attempt in range(4):
            a = rng.uniform(0, 2 * np.pi)
            dist = rng.uniform(0.3, 1.0) * (r + o_diameter / 2)
            o_centre = (centre[0] + dist * math.cos(a), centre[1] + dist * math.sin(a))
            o_placed = _warp(sprite, o_centre, o_diameter, float(rng.uniform(0, 2 * np.pi)), (h, w))
            if o_placed is None:
                continue
            o_mask = _full_mask(o_placed, (h, w))
            if int((visible & ~o_mask).sum()) >= min_visible:
                _blend(img, o_placed, *_colour_jitter(rng))
                visible &= ~o_mask
                if labels is not None:
                    labels[o_mask] = 0
                break

    # global photometric effects: illumination ramp, slight blur, sensor noise
    a = rng.uniform(0, 2 * np.pi)
    xs = (np.arange(w, dtype=np.float32) - w / 2) * np.float32(math.cos(a) / (short / 2))
    ys = (np.arange(h, dtype=np.float32) - h / 2) * np.float32(math.sin(a) / (short / 2))
    img *= (1.0 + np.float32(rng.uniform(0.0, 0.12)) * (ys[:, None] + xs[None, :]))[..., None]
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.4, 0.9)))
    img += np.float32(rng.uniform(1.0, 4.0)) * rng.standard_normal(img.shape, dtype=np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if labels is not None:
        labels[full] = 0
        return image, visible, labels
    return image, visible


# ----------------------------------------------------------------------------- on disk


def _params(split: str, seed: int, num_objects: int, images_per_object: int) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "split": split,
        "seed": seed,
        "num_objects": num_objects,
        "images_per_object": images_per_object,
    }


def _object_name(index: int, identity: Identity) -> str:
    return f"obj{index:02d}_{identity.family}"


def _is_complete(split_dir: Path, params: dict) -> bool:
    try:
        manifest = json.loads((split_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("params") != params:
        return False
    n = params["images_per_object"]
    objects = manifest.get("objects", [])
    if len(objects) != params["num_objects"]:
        return False
    for obj in objects:
        name = obj["name"]
        for k in range(n):
            if not (split_dir / "Images" / name / f"{k:02d}.jpg").is_file():
                return False
            if not (split_dir / "Annotations" / name / f"{k:02d}.png").is_file():
                return False
    return True


def _write_split(
    out: Path, split: str, seed: int, identities: list[Identity], images_per_object: int
) -> list[dict]:
    objects = []
    for i, ident in enumerate(identities):
        name = _object_name(i, ident)
        img_dir, ann_dir = out / "Images" / name, out / "Annotations" / name
        img_dir.mkdir(parents=True)
        ann_dir.mkdir(parents=True)
        for k in range(images_per_object):
            rng = np.random.default_rng([SPLITS[split], seed, i, k, GENERATOR_VERSION])
            image, mask = render_scene(ident, rng, distractor_pool=identities)
            ok = cv2.imwrite(
                str(img_dir / f"{k:02d}.jpg"),
                cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY],
            )
            ann = np.zeros(mask.shape + (3,), np.uint8)
            ann[mask] = _FG_BGR
            ok = ok and cv2.imwrite(str(ann_dir / f"{k:02d}.png"), ann)
            if not ok:
                raise OSError(f"cv2.imwrite failed in {out}")
        objects.append(
            {
                "name": name,
                "identity_seed": ident.seed,
                "family": ident.family,
                "texture": ident.texture,
                "palette": [list(c) for c in ident.palette],
            }
        )
    return objects


def ensure_synthetic(
    root: str | os.PathLike,
    split: str = "heldout",
    seed: int = 0,
    num_objects: int = 6,
    images_per_object: int = 4,
    train_objects: int = 32,
) -> Path:
    """Generate the synthetic PerSeg-layout split under ``root`` unless already complete.

    Writes ``root/<split>/Images/<obj>/NN.jpg``, ``root/<split>/Annotations/<obj>/NN.png``
    (3-channel PNG, background (0,0,0), foreground BGR (0,0,128) i.e. red 128 as in PerSeg) and
    ``root/<split>/manifest.json`` (generator version, parameters, objects). Objects are named
    ``objNN_<family>``. The split is regenerated when the manifest is missing, its parameters or
    generator version differ, or a file is missing. Generation happens in a temporary folder
    under ``root`` that is renamed into place (under a file lock), so an interrupted or
    concurrent run never leaves a half-written split behind.

    Args:
        root: folder holding the splits.
        split: ``"heldout"`` (evaluation objects) or ``"train"``; their identity seeds come
            from disjoint ranges, so no identity is shared.
        seed: dataset seed.
        num_objects: number of objects of the ``heldout`` split.
        images_per_object: images (scenes) per object; ``00`` is the usual reference.
        train_objects: number of objects of the ``train`` split (used instead of
            ``num_objects`` when ``split == "train"``).

    Returns:
        The split folder ``root/<split>``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    n_objects = train_objects if split == "train" else num_objects
    if n_objects < 1 or images_per_object < 1:
        raise ValueError("need at least one object and one image per object")
    root = Path(root)
    split_dir = root / split
    params = _params(split, seed, n_objects, images_per_object)
    if _is_complete(split_dir, params):
        return split_dir

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{split}.lock")):
        if _is_complete(split_dir, params):  # another process finished meanwhile
            return split_dir
        for stale in [*root.glob(f".{split}.tmp-*"), *root.glob(f".{split}.old-*")]:
            shutil.rmtree(
                stale, ignore_errors=True
            )  # left by an interrupted run (we hold the lock)
        tmp = Path(tempfile.mkdtemp(prefix=f".{split}.tmp-", dir=root))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the split is meant to be shared
        try:
            identities = split_identities(split, seed, n_objects)
            objects = _write_split(tmp, split, seed, identities, images_per_object)
            manifest = {"params": params, "objects": objects}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
            old = None
            if split_dir.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{split}.old-", dir=root))
                os.replace(split_dir, old / split)
            os.replace(tmp, split_dir)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return split_dir


def synthetic_dataset(
    root: str | os.PathLike,
    split: str = "heldout",
    seed: int = 0,
    num_objects: int = 6,
    images_per_object: int = 4,
    reference: str = "00",
    objects: list[str] | None = None,
    shots: int = 1,
):
    """The synthetic split as a `PerSegDataset` (generated under `root` on first use)."""
    from persam.data.perseg import PerSegDataset

    split_root = ensure_synthetic(
        root, split=split, seed=seed, num_objects=num_objects, images_per_object=images_per_object
    )
    return PerSegDataset(split_root, reference=reference, objects=objects, shots=shots)
