"""Reference-mask quality: degrade the reference annotation before learning from it.

`data.reference_perturbation` = `none`, `erode`, `dilate`, `shift`, `noise` or `box`, with
`data.perturbation_amount` (a fraction; s = sqrt(mask area) in pixels is the object's size):

* erode / dilate: by a disc of radius round(amount * s) pixels;
* shift: moved right and down by amount * (box width, box height) (pixels leaving the image
  are lost);
* noise: every pixel within round(amount * s) of the boundary is flipped with probability 1/2
  (seeded by the object's name: the same mask every run);
* box: the mask's bounding box, filled (amount unused).
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np

PERTURBATIONS = ("none", "erode", "dilate", "shift", "noise", "box")


class EmptyPerturbedMask(ValueError):
    """The perturbation left no foreground pixel in the reference mask."""


def check_perturbation(kind: str, amount: float) -> None:
    if kind not in PERTURBATIONS:
        raise ValueError(
            f"data.reference_perturbation must be one of {', '.join(PERTURBATIONS)}, got {kind!r}"
        )
    if not 0.0 <= float(amount) <= 1.0:
        raise ValueError(f"data.perturbation_amount must be in [0, 1], got {amount}")


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def perturb_mask(mask: np.ndarray, kind: str, amount: float, seed: str | int = 0) -> np.ndarray:
    """The perturbed mask (H, W) bool of `mask` (H, W) bool; see the module docstring."""
    check_perturbation(kind, amount)
    mask = np.asarray(mask, bool)
    if kind == "none" or not mask.any():
        return mask.copy()
    ys, xs = np.nonzero(mask)
    size = float(np.sqrt(mask.sum()))
    radius = int(round(amount * size))
    m8 = mask.astype(np.uint8)
    if kind == "box":
        out = np.zeros_like(mask)
        out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
        return out
    if kind in ("erode", "dilate"):
        if radius == 0:
            return mask.copy()
        op = cv2.erode if kind == "erode" else cv2.dilate
        return op(m8, _disc(radius), borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
    if kind == "shift":
        dx = int(round(amount * (xs.max() - xs.min() + 1)))
        dy = int(round(amount * (ys.max() - ys.min() + 1)))
        out = np.zeros_like(mask)
        h, w = mask.shape
        out[dy:, dx:] = mask[: h - dy, : w - dx]
        return out
    # noise
    if radius == 0:
        return mask.copy()
    band = (cv2.dilate(m8, _disc(radius)) > 0) & ~(cv2.erode(m8, _disc(radius)) > 0)
    if isinstance(seed, str):
        seed = zlib.crc32(seed.encode())
    flips = np.random.default_rng(seed).random(mask.shape) < 0.5
    return mask ^ (band & flips)


def perturb_annotation(
    mask_rgb: np.ndarray, kind: str, amount: float, name: str, stem: str
) -> np.ndarray:
    """Perturb an RGB annotation (H, W, 3) of object `name` (foreground: any channel > 0).

    Returns the RGB annotation (foreground red 128, as PerSeg) of the perturbed mask; raises
    `EmptyPerturbedMask` naming the object when nothing is left.
    """
    if kind == "none":
        return mask_rgb
    mask = perturb_mask((mask_rgb > 0).any(-1), kind, amount, seed=f"{name}/{stem}")
    if not mask.any():
        raise EmptyPerturbedMask(
            f"object '{name}': data.reference_perturbation={kind} with "
            f"data.perturbation_amount={amount} leaves the reference mask {stem} empty; lower "
            f"the amount"
        )
    out = np.zeros_like(mask_rgb)
    out[mask] = (128, 0, 0)
    return out
