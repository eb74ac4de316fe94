"""PerSeg evaluation metrics, following the official PerSAM evaluation.

For one object (a PerSeg folder), the reference image is excluded by the caller and the metrics
are accumulated over its remaining test images:

* ``iou``  = sum of intersections / (sum of unions + 1e-10)
* ``acc``  = sum of intersections / (sum of ground-truth areas + 1e-10)
* ``biou`` = Boundary IoU (Cheng et al., 2021) aggregated the same way: sum over images of
  ``|Gb & Pb|`` / (sum over images of ``|Gb | Pb|`` + 1e-10), where ``Gb`` and ``Pb`` are the
  boundary regions of the ground-truth and predicted masks (see :func:`mask_to_boundary`).

The ``+ 1e-10`` (official formula) means an object whose accumulated union is empty scores 0.0,
never NaN; this cannot happen on PerSeg, whose masks are never empty.
The dataset-level numbers (``miou``, ``mbiou``, ``macc``) are plain means over objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

EPS = 1e-10

__all__ = ["EPS", "ObjectMeter", "mask_to_boundary", "mean_over_objects"]


def _as_bool_mask(mask: np.ndarray, name: str) -> np.ndarray:
    """Return ``mask`` as a bool HxW array (nonzero = foreground); reject other ranks."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D HxW mask, got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def mask_to_boundary(mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """Boundary region of a binary mask, as in Boundary IoU (Cheng et al., 2021).

    The mask is padded with a 1-pixel zero border, eroded ``d`` times with a 3x3 kernel, where
    ``d = max(1, round(dilation_ratio * sqrt(H**2 + W**2)))``, and the boundary is the mask minus
    its erosion. Because of the zero padding, object pixels at the image border are boundary
    (the object is cut by the border), while background at the border adds nothing.

    Args:
        mask: HxW mask (bool, or any dtype where nonzero means foreground).
        dilation_ratio: boundary width as a fraction of the image diagonal.

    Returns:
        bool HxW array, True on the boundary pixels of ``mask``.
    """
    m = _as_bool_mask(mask, "mask")
    h, w = m.shape
    diag = float(np.sqrt(h**2 + w**2))
    dilation = max(1, int(round(dilation_ratio * diag)))
    padded = cv2.copyMakeBorder(
        m.astype(np.uint8), 1, 1, 1, 1, borderType=cv2.BORDER_CONSTANT, value=0
    )
    kernel = np.ones((3, 3), dtype=np.uint8)
    eroded = cv2.erode(padded, kernel, iterations=dilation)[1 : h + 1, 1 : w + 1]
    return m & ~eroded.astype(bool)


class ObjectMeter:
    """Accumulates the PerSeg metrics of one object over its test images.

    Call :meth:`update` once per test image (reference image excluded), then :meth:`result`.
    """

    def __init__(self, dilation_ratio: float = 0.02) -> None:
        self.dilation_ratio = dilation_ratio
        self.intersection = 0
        self.union = 0
        self.target = 0
        self.boundary_intersection = 0
        self.boundary_union = 0
        self.n_images = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image.

        Args:
            pred: predicted HxW mask (bool; nonzero = foreground).
            gt: ground-truth HxW mask of the same shape.

        Raises:
            ValueError: if the masks are not 2-D or their shapes differ.
        """
        p = _as_bool_mask(pred, "pred")
        g = _as_bool_mask(gt, "gt")
        if p.shape != g.shape:
            raise ValueError(f"pred shape {p.shape} differs from gt shape {g.shape}")
        self.intersection += int(np.count_nonzero(p & g))
        self.union += int(np.count_nonzero(p | g))
        self.target += int(np.count_nonzero(g))
        pb = mask_to_boundary(p, self.dilation_ratio)
        gb = mask_to_boundary(g, self.dilation_ratio)
        self.boundary_intersection += int(np.count_nonzero(pb & gb))
        self.boundary_union += int(np.count_nonzero(pb | gb))
        self.n_images += 1

    def result(self) -> dict:
        """Return ``{"iou", "biou", "acc"}`` (floats in [0, 1]) and ``"n_images"`` (int).

        Ratios are sum/sum over the images with the official ``+ 1e-10`` in the denominator,
        so an empty accumulated union gives 0.0.

        Raises:
            ValueError: if no image was added.
        """
        if self.n_images == 0:
            raise ValueError("ObjectMeter.result() called before any update()")
        return {
            "iou": self.intersection / (self.union + EPS),
            "biou": self.boundary_intersection / (self.boundary_union + EPS),
            "acc": self.intersection / (self.target + EPS),
            "n_images": self.n_images,
        }


def mean_over_objects(results: Sequence[dict]) -> dict:
    """Dataset-level metrics: plain means over objects of ``ObjectMeter.result()`` dicts.

    Returns:
        ``{"miou", "mbiou", "macc"}`` as floats.

    Raises:
        ValueError: if ``results`` is empty.
    """
    if len(results) == 0:
        raise ValueError("mean_over_objects() needs at least one object result")
    return {
        "miou": float(np.mean([r["iou"] for r in results])),
        "mbiou": float(np.mean([r["biou"] for r in results])),
        "macc": float(np.mean([r["acc"] for r in results])),
    }
