"""Drawing: textures, an identity's canonical sprite, and placing sprites into an image.

A sprite is an RGBA uint8 square (side x side x 4) whose unit radius is
``UNIT_FRACTION * side`` pixels; :func:`warp` places it at a pose, :func:`blend` composites it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import cv2
import numpy as np

from persam.data.synthetic.identities import Identity

__all__ = [
    "ONE_OFF_SPRITE",
    "blend",
    "cached_sprite",
    "colour_jitter",
    "full_mask",
    "part_sprites",
    "render_sprite",
    "smooth_noise",
    "texture",
    "warp",
]

SPRITE = 384  # side of the canonical sprite (pixels)
ONE_OFF_SPRITE = 192  # cheaper sprites for one-off distractors and occluders
UNIT_FRACTION = 0.46  # sprite pixels per unit radius / sprite side (shapes fit the unit disc)


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
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


def texture(
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
        n = smooth_noise(rng, u.shape[0], u.shape[1], freq * span / 2)
        return _ramp(cols, (n - 0.5) * aux + 0.5)
    raise ValueError(f"unknown texture {kind!r}")


def render_sprite(identity: Identity, side: int = SPRITE) -> np.ndarray:
    """Canonical RGBA sprite (uint8, side x side x 4) of an identity, unit radius =
    ``UNIT_FRACTION * side`` pixels; the texture covers the whole sprite (also outside the
    shape, so that bilinear warping leaves no dark fringe)."""
    s = side
    unit = UNIT_FRACTION * side
    mask = np.zeros((s, s), np.uint8)
    for fill, poly in identity.shape:
        pts = np.round((np.asarray(poly) * unit + s / 2) * 16).astype(np.int32)
        cv2.fillPoly(mask, [pts], 255 if fill else 0, lineType=cv2.LINE_AA, shift=4)
    coords = (np.arange(s, dtype=np.float32) - s / 2) / unit
    u, v = np.meshgrid(coords, coords)
    rng = np.random.default_rng([identity.seed, 7])
    rgb = texture(identity.texture, u, v, identity.palette, identity.texture_params, rng)
    if identity.outline:
        width = _outline_width(unit)
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
def cached_sprite(identity: Identity) -> np.ndarray:
    sprite = render_sprite(identity)
    sprite.setflags(write=False)
    return sprite


def _outline_width(unit: float) -> int:
    return max(2, int(0.06 * unit))


@functools.lru_cache(maxsize=64)
def part_sprites(identity: Identity, side: int = SPRITE) -> tuple[np.ndarray, ...]:
    """The visible parts of an identity, each an alpha mask (uint8, side x side) in the frame of
    :func:`render_sprite`: a composite's shapes (each minus the shapes drawn over it), or an
    outlined object's interior (the object minus its outline band). Empty for objects without
    parts. These are the "part" scale of SAM's nested part / object / group masks."""
    s = side
    unit = UNIT_FRACTION * side

    def fill(poly) -> np.ndarray:
        out = np.zeros((s, s), np.uint8)
        pts = np.round((np.asarray(poly) * unit + s / 2) * 16).astype(np.int32)
        cv2.fillPoly(out, [pts], 255, lineType=cv2.LINE_AA, shift=4)
        return out

    if identity.family == "composite" and len(identity.shape) > 1:
        solids = [fill(poly) for f, poly in identity.shape if f]
        parts = []
        for i, alpha in enumerate(solids):
            above = np.max(solids[i + 1 :], axis=0) if i + 1 < len(solids) else None
            part = alpha if above is None else np.minimum(alpha, 255 - above)
            if (part >= 128).sum() >= 0.05 * (np.max(solids, axis=0) >= 128).sum():
                parts.append(part)
        out = tuple(parts) if len(parts) > 1 else ()
    elif identity.outline:
        mask = render_sprite(identity, side)[..., 3]
        width = _outline_width(unit)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
        interior = cv2.erode((mask >= 128).astype(np.uint8), kernel) * 255
        out = (interior,) if interior.any() else ()
    else:
        out = ()
    for part in out:
        part.setflags(write=False)
    return out


def warp(
    sprite: np.ndarray,
    centre: tuple[float, float],
    diameter: float,
    angle: float,
    hw: tuple[int, int],
) -> tuple[tuple[int, int], np.ndarray] | None:
    """Place a sprite in an image of size ``hw``; returns ``((y0, x0), rgba float32 patch)``."""
    h, w = hw
    unit = UNIT_FRACTION * sprite.shape[0]
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


def blend(
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


def full_mask(placed: tuple[tuple[int, int], np.ndarray], hw: tuple[int, int]) -> np.ndarray:
    """Bool H x W mask (alpha >= 0.5) of a warped patch (RGBA, or a lone alpha channel)."""
    (y0, x0), patch = placed
    alpha = patch[..., 3] if patch.ndim == 3 else patch
    mask = np.zeros(hw, bool)
    mask[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] = alpha >= 127.5
    return mask


def colour_jitter(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    gain = np.float32(rng.uniform(0.85, 1.15)) * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    bias = rng.uniform(-10, 10, 3).astype(np.float32)
    return gain, bias
