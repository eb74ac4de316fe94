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

Few-shot benchmarks (FSS-1000, COCO-20i, LVIS-92i) are scored as HSNet's evaluator does
(:func:`episode_areas`, :func:`fewshot_scores`): per class, the sum of the foreground
intersections over the sum of the foreground unions of its episodes; ``miou`` the mean over the
fold's classes (a class no episode drew counts 0); ``fbiou`` the mean of the foreground IoU and
the background IoU, each summed over all the episodes of the fold's classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

EPS = 1e-10

__all__ = [
    "EPS",
    "ObjectMeter",
    "episode_areas",
    "fewshot_scores",
    "mask_to_boundary",
    "mean_over_objects",
]


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


def episode_areas(pred: np.ndarray, gt: np.ndarray) -> dict[str, int]:
    """Foreground and background intersection and union of one episode's masks (H, W).

    Returns ``{"inter_fg", "union_fg", "inter_bg", "union_bg"}`` pixel counts.
    """
    p = _as_bool_mask(pred, "pred")
    g = _as_bool_mask(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred shape {p.shape} differs from gt shape {g.shape}")
    return {
        "inter_fg": int(np.count_nonzero(p & g)),
        "union_fg": int(np.count_nonzero(p | g)),
        "inter_bg": int(np.count_nonzero(~p & ~g)),
        "union_bg": int(np.count_nonzero(~p | ~g)),
    }


def fewshot_scores(episodes: Sequence[dict], classes: Sequence[str]) -> dict:
    """HSNet's mIoU and FB-IoU over a fold's `classes` from per-episode `episode_areas` entries.

    Each entry has ``"class"`` and the four areas. A class's IoU is its summed foreground
    intersection over max(summed foreground union, 1), so a class that no episode drew scores 0
    and still counts in the mean. Returns ``{"miou", "fbiou", "classes": {name: {"iou",
    "n_episodes"}}, "classes_without_episodes": [...]}`` (fractions in [0, 1]).
    """
    if not classes:
        raise ValueError("fewshot_scores() needs the fold's classes")
    sums = {c: np.zeros(4, dtype=np.int64) for c in classes}
    counts = dict.fromkeys(classes, 0)
    for e in episodes:
        if e["class"] not in sums:
            raise ValueError(f"episode of class {e['class']!r}, which is not one of the fold's")
        sums[e["class"]] += [e["inter_fg"], e["union_fg"], e["inter_bg"], e["union_bg"]]
        counts[e["class"]] += 1
    per_class = {
        c: {"iou": float(s[0] / max(s[1], 1)), "n_episodes": counts[c]} for c, s in sums.items()
    }
    total = np.sum(list(sums.values()), axis=0)
    fg = total[0] / total[1] if total[1] else 0.0
    bg = total[2] / total[3] if total[3] else 0.0
    return {
        "miou": float(np.mean([r["iou"] for r in per_class.values()])),
        "fbiou": float((fg + bg) / 2),
        "classes": per_class,
        "classes_without_episodes": [c for c in classes if counts[c] == 0],
    }
