"""Procedurally drawn multi-object videos in the DAVIS 2017 layout, generated on first use.

Each sequence shows 2-3 identities of the synthetic world (`persam.data.synthetic`: the same
shapes, textures, background and compositing) moving over a static cluttered background seen
by a slowly panning camera. The objects move, change scale and rotate; later objects are drawn
over earlier ones (mutual occlusion); in the `exit-return` sequence an object leaves the frame
entirely and comes back; sizes are never square (one sequence is portrait).

    root/<key>/JPEGImages/480p/<seq>/00000.jpg   RGB, JPEG quality 90
    root/<key>/Annotations/480p/<seq>/00000.png  indexed PNGs, DAVIS palette, every frame
    root/<key>/ImageSets/2017/val.txt
    root/<key>/manifest.json                     generator version and parameters

`<key>` names the parameters, so different settings never overwrite each other. Everything is
deterministic given the seed; generation happens in a temporary folder renamed into place
under a file lock, like the image world.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from persam.data.davis import DavisDataset, davis_palette
from persam.data.files import generated_folder
from persam.data.synthetic import split_identities
from persam.data.synthetic.drawing import blend, cached_sprite, colour_jitter, full_mask, warp
from persam.data.synthetic.scene import _background

#: Bump whenever the drawn pixels change for the same parameters (forces regeneration).
VIDEO_GENERATOR_VERSION = 1
_JPEG_QUALITY = 90

# (name, (height, width), number of objects, scenario)
SCENARIOS: tuple[tuple[str, tuple[int, int], int, str], ...] = (
    ("crossing", (240, 352), 2, "cross"),
    ("exit-return", (224, 368), 2, "exit"),
    ("three-spin", (256, 320), 3, "spin"),
    ("portrait", (336, 240), 2, "cross"),
)


@dataclass(frozen=True)
class Track:
    """An object's pose at time t in [0, 1]: centre (x, y), diameter and angle (radians)."""

    start: tuple[float, float]
    end: tuple[float, float]
    diameter: tuple[float, float]  # at t = 0 and t = 1
    angle: tuple[float, float]
    wobble: float = 0.0

    def pose(self, t: float) -> tuple[tuple[float, float], float, float]:
        x = self.start[0] + (self.end[0] - self.start[0]) * t
        y = self.start[1] + (self.end[1] - self.start[1]) * t
        y += self.wobble * math.sin(2 * math.pi * t)
        d = self.diameter[0] + (self.diameter[1] - self.diameter[0]) * t
        a = self.angle[0] + (self.angle[1] - self.angle[0]) * t
        return (x, y), d, a


def _tracks(rng: np.random.Generator, hw: tuple[int, int], n: int, kind: str) -> list[Track]:
    h, w = hw
    short = min(h, w)
    tracks = []
    for k in range(n):
        d0 = short * rng.uniform(0.32, 0.42)
        d1 = d0 * rng.uniform(0.75, 1.3)  # scale change
        a0 = rng.uniform(0, 2 * math.pi)
        a1 = a0 + rng.choice([-1, 1]) * rng.uniform(0.4, 1.2)  # rotation
        r = max(d0, d1) / 2
        if kind == "cross":  # the objects swap sides and pass over each other
            y = h * (0.35 + 0.3 * k) + rng.uniform(-0.05, 0.05) * h
            xs = (r + 4, w - r - 4) if k % 2 == 0 else (w - r - 4, r + 4)
            tracks.append(Track((xs[0], y), (xs[1], h - y), (d0, d1), (a0, a1), 0.08 * h))
        elif kind == "exit" and k == 0:  # leaves through the right edge and comes back
            y = h * 0.4
            tracks.append(Track((w * 0.45, y), (w * 0.45, y), (d0, d0), (a0, a1)))
        elif kind == "exit":
            y = h * 0.75
            tracks.append(Track((r + 4, y), (w * 0.45, y - 0.1 * h), (d0, d1), (a0, a1)))
        else:  # spin: slow drift, strong rotation and scale change
            cx = w * (0.25 + 0.25 * k)
            cy = h * rng.uniform(0.35, 0.65)
            tracks.append(
                Track((cx, cy), (cx + rng.uniform(-0.08, 0.08) * w, cy), (d0, d1), (a0, a0 + 2.0))
            )
    return tracks


def _exit_offset(t: float, w: int, r: float) -> float:
    """Horizontal offset of the `exit` object: it slides out through the right edge for t in
    [0.15, 0.4], is entirely outside the frame for t in [0.4, 0.6], and slides back by 0.85."""
    away = w * 0.55 + 2 * r + 8
    if t < 0.15 or t > 0.85:
        return 0.0
    if t < 0.4:
        return away * (t - 0.15) / 0.25
    if t <= 0.6:
        return away
    return away * (0.85 - t) / 0.25


def render_sequence(
    index: int, seed: int, num_frames: int
) -> tuple[str, list[np.ndarray], list[np.ndarray]]:
    """(name, frames RGB uint8 (H, W, 3), label maps uint8 (H, W)) of scenario `index`."""
    name, (h, w), n, kind = SCENARIOS[index % len(SCENARIOS)]
    if index >= len(SCENARIOS):
        name = f"{name}-{index // len(SCENARIOS)}"
    rng = np.random.default_rng([seed, index, VIDEO_GENERATOR_VERSION, 17])
    identities = split_identities("heldout", seed + 1000 * (index + 1), n)
    pan = 24
    background = _background(rng, h + 2 * pan, w + 2 * pan)
    pan_dir = rng.uniform(0, 2 * math.pi)
    tracks = _tracks(rng, (h, w), n, kind)
    jitters = [colour_jitter(rng) for _ in range(n)]
    frames, labels = [], []
    for i in range(num_frames):
        t = i / max(1, num_frames - 1)
        ox = int(round(pan + pan * 0.8 * (2 * t - 1) * math.cos(pan_dir)))
        oy = int(round(pan + pan * 0.8 * (2 * t - 1) * math.sin(pan_dir)))
        img = background[oy : oy + h, ox : ox + w].copy()
        label = np.zeros((h, w), np.uint8)
        for k, (ident, track) in enumerate(zip(identities, tracks, strict=True)):
            (cx, cy), d, a = track.pose(t)
            if kind == "exit" and k == 0:
                cx += _exit_offset(t, w, d / 2)
            placed = warp(cached_sprite(ident), (cx, cy), d, a, (h, w))
            if placed is None:
                continue
            blend(img, placed, *jitters[k])
            label[full_mask(placed, (h, w))] = k + 1
        img += np.float32(2.0) * rng.standard_normal(img.shape, dtype=np.float32)
        frames.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
        labels.append(label)
    return name, frames, labels


def _params(seed: int, num_sequences: int, num_frames: int) -> dict:
    return {
        "generator_version": VIDEO_GENERATOR_VERSION,
        "seed": seed,
        "num_sequences": num_sequences,
        "num_frames": num_frames,
    }


def _is_complete(folder: Path, params: dict) -> bool:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("params") != params:
        return False
    for name in manifest.get("sequences", []):
        for i in range(params["num_frames"]):
            if not (folder / "JPEGImages" / "480p" / name / f"{i:05d}.jpg").is_file():
                return False
            if not (folder / "Annotations" / "480p" / name / f"{i:05d}.png").is_file():
                return False
    return len(manifest.get("sequences", [])) == params["num_sequences"]


def ensure_synthetic_video(
    root: str | os.PathLike, seed: int = 0, num_sequences: int = 3, num_frames: int = 12
) -> Path:
    """Generate the synthetic videos under `root` unless already complete; returns the DAVIS
    root of this parameter set."""
    if num_sequences < 1 or num_frames < 3:
        raise ValueError("need at least one sequence and three frames (DAVIS scores 1..T-2)")
    params = _params(seed, num_sequences, num_frames)
    root = Path(root)
    key = f"v{VIDEO_GENERATOR_VERSION}-seed{seed}-n{num_sequences}-t{num_frames}"
    folder = root / key
    palette = davis_palette()

    def write(tmp: Path) -> None:
        names = []
        for index in range(num_sequences):
            name, frames, labels = render_sequence(index, seed, num_frames)
            img_dir = tmp / "JPEGImages" / "480p" / name
            ann_dir = tmp / "Annotations" / "480p" / name
            img_dir.mkdir(parents=True)
            ann_dir.mkdir(parents=True)
            for i, (frame, label) in enumerate(zip(frames, labels, strict=True)):
                Image.fromarray(frame).save(img_dir / f"{i:05d}.jpg", quality=_JPEG_QUALITY)
                png = Image.fromarray(label, mode="P")
                png.putpalette(palette)
                png.save(ann_dir / f"{i:05d}.png")
            names.append(name)
        (tmp / "ImageSets" / "2017").mkdir(parents=True)
        (tmp / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names) + "\n")
        (tmp / "manifest.json").write_text(
            json.dumps({"params": params, "sequences": names}, indent=2)
        )

    return generated_folder(folder, lambda d: _is_complete(d, params), write)


class SyntheticVideoDataset(DavisDataset):
    """The synthetic videos as a `DavisDataset` (generated under `root` on first use)."""

    def __init__(
        self,
        root: str | os.PathLike,
        seed: int = 0,
        num_sequences: int = 3,
        num_frames: int = 12,
        sequences: list[str] | None = None,
    ) -> None:
        folder = ensure_synthetic_video(root, seed, num_sequences, num_frames)
        super().__init__(folder, split="val", resolution="480p", sequences=sequences)
