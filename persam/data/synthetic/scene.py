"""Scene composition: one identity on a cluttered background, among distractors and occluders.

A scene shows one identity (the target) at a random position, scale (0.6-1.4x), rotation and
colour/brightness jitter, on a cluttered textured background with distractor objects of other
identities behind it and a few small occluders in front (the target always stays mostly
visible). Everything is drawn from the one ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from persam.data.synthetic.drawing import (
    ONE_OFF_SPRITE,
    blend,
    cached_sprite,
    colour_jitter,
    full_mask,
    part_sprites,
    render_sprite,
    smooth_noise,
    texture,
    warp,
)
from persam.data.synthetic.identities import ONE_OFF_SEED_MAX, Identity, hsv, make_identity

__all__ = ["Scene", "render_scene"]

_MIN_SIDE, _MAX_SIDE = 320, 640
_MIN_ASPECT, _MAX_ASPECT = 0.6, 1.7  # width / height


@dataclass
class Scene:
    """A rendered scene.

    Attributes:
        image: RGB uint8 (H, W, 3).
        mask: bool (H, W), the visible target pixels.
        labels: uint8 (H, W), ``k`` (1-based) on the visible pixels of the k-th distractor
            drawn, 0 elsewhere; ``None`` unless asked for (``distractor_labels``).
        instances: uint8 (H, W), ``k`` (1-based) on the visible pixels of the k-th copy of the
            target (``mask`` is ``instances > 0``).
        parts: uint8 (H, W), ``k`` (1-based) on the visible pixels of the target's k-th part
            (:func:`~persam.data.synthetic.drawing.part_sprites`); ``None`` unless asked for
            (``part_labels``).
    """

    image: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None = None
    instances: np.ndarray | None = None
    parts: np.ndarray | None = None


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
            hsv(hue + rng.uniform(-0.15, 0.15), rng.uniform(0.05, 0.6), rng.uniform(0.25, 0.95))
            for _ in range(int(rng.integers(2, 4)))
        ]
        kind = str(rng.choice(["noise", "stripes", "checker", "gradient", "dots", "plain"]))
        params = (rng.uniform(0, np.pi), rng.uniform(1.0, 6.0), rng.random(), rng.uniform(0.2, 0.4))
        if kind == "noise":
            params = (0.0, rng.uniform(1.5, 5.0), 0.0, rng.uniform(1.0, 3.0))
        tex = texture(kind, u, v, pal, params, rng)
        mean = tex.reshape(-1, 3).mean(0)
        contrast = np.float32(rng.uniform(0.25, 0.8))
        tex = mean + contrast * (tex - mean)
        # large-scale stains / lighting variation
        stain = smooth_noise(rng, hh, hw, rng.uniform(2, 5))
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
            float(c) for c in hsv(rng.random(), rng.uniform(0, 0.8), rng.uniform(0.15, 1.0))
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


# Over 80 lines on purpose: one seeded sequence of random draws. The shipped embedded model and
# every recorded synthetic result depend on their order; a split would make reordering easy to
# miss (tests/test_synthetic.py checks the bytes of the generated splits).
def render_scene(
    identity: Identity,
    rng: np.random.Generator,
    size: tuple[int, int] | None = None,
    distractors: int = 4,
    distractor_pool: Sequence[Identity] = (),
    max_occluders: int = 2,
    max_occlusion: float = 0.15,
    distractor_labels: bool = False,
    copies: int = 1,
    part_labels: bool = False,
) -> Scene:
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
        distractor_labels: also fill ``Scene.labels`` with the visible pixels of every
            distractor (training data for promptable segmentation of more than the target).
            Draws nothing differently.
        copies: copies of the target in the scene (each its own pose, scale 0.7-1.3x of the
            first and colour jitter, drawn over the first and covering at most 20% of the
            copies before it; a copy that finds no such place in 10 tries is left out). With 1
            the scene is exactly the single-target one.
        part_labels: also fill ``Scene.parts`` with the visible parts of the (first) target.
            Draws nothing differently.

    Returns:
        The :class:`Scene` (``labels`` is ``None`` without ``distractor_labels``).
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
            sprite = cached_sprite(other)
        else:
            sprite = render_sprite(
                make_identity(int(rng.integers(ONE_OFF_SEED_MAX))), ONE_OFF_SPRITE
            )
        d_centre, d_angle = _random_pose(rng, (h, w))
        placed = warp(sprite, d_centre, diameter * rng.uniform(0.5, 1.2), d_angle, (h, w))
        if placed is not None:
            blend(img, placed, *colour_jitter(rng))
            if labels is not None:  # later objects cover earlier ones
                labels[full_mask(placed, (h, w))] = k + 1

    placed = warp(cached_sprite(identity), centre, diameter, angle, (h, w))
    assert placed is not None  # the target lies inside the image
    blend(img, placed, *colour_jitter(rng))
    full = full_mask(placed, (h, w))
    parts = None
    if part_labels:
        parts = np.zeros((h, w), np.uint8)
        for k, alpha in enumerate(part_sprites(identity)):
            part = warp(alpha, centre, diameter, angle, (h, w))
            if part is not None:
                parts[full_mask(part, (h, w)) & full] = k + 1
    instances = full.astype(np.uint8)
    for _copy in range(copies - 1):
        for _attempt in range(10):
            c_diameter = diameter * rng.uniform(0.7, 1.3)
            c_r = min(c_diameter / 2, (min(h, w) - 1) / 2)
            c_centre = (float(rng.uniform(c_r, w - c_r)), float(rng.uniform(c_r, h - c_r)))
            c_placed = warp(
                cached_sprite(identity), c_centre, 2 * c_r, float(rng.uniform(0, 2 * np.pi)), (h, w)
            )
            if c_placed is None:
                continue
            c_mask = full_mask(c_placed, (h, w))
            if int((c_mask & (instances > 0)).sum()) <= 0.2 * int(c_mask.sum()):
                blend(img, c_placed, *colour_jitter(rng))
                instances[c_mask] = instances.max() + 1
                break
    full = instances > 0
    visible = full.copy()
    min_visible = (1.0 - max_occlusion) * int(full.sum())

    for _ in range(int(rng.integers(0, max_occluders + 1))):
        sprite = render_sprite(make_identity(int(rng.integers(ONE_OFF_SEED_MAX))), ONE_OFF_SPRITE)
        o_diameter = diameter * rng.uniform(0.25, 0.5)
        for _attempt in range(4):
            a = rng.uniform(0, 2 * np.pi)
            dist = rng.uniform(0.3, 1.0) * (r + o_diameter / 2)
            o_centre = (centre[0] + dist * math.cos(a), centre[1] + dist * math.sin(a))
            o_placed = warp(sprite, o_centre, o_diameter, float(rng.uniform(0, 2 * np.pi)), (h, w))
            if o_placed is None:
                continue
            o_mask = full_mask(o_placed, (h, w))
            if int((visible & ~o_mask).sum()) >= min_visible:
                blend(img, o_placed, *colour_jitter(rng))
                visible &= ~o_mask
                instances[o_mask] = 0
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
    if parts is not None:
        parts[~visible] = 0
    return Scene(image=image, mask=visible, labels=labels, instances=instances, parts=parts)
