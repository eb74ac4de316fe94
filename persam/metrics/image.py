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

Few-shot scores (mIoU, FB-IoU) live in :mod:`persam.metrics.fewshot`.

Instances (several copies of the concept in one image) are scored by :class:`InstanceMeter`:
a ground-truth instance is *found* when one predicted instance (each used at most once) has
IoU >= 0.5 with it, matched greedily by decreasing IoU; ``precision = found / predicted`` and
``recall = found / ground truth``, the counts summed over the object's test images.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

EPS = 1e-10

__all__ = [
    "EPS",
    "InstanceMeter",
    "ObjectMeter",
    "connected_instances",
    "mask_to_boundary",
    "match_instances",
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


def connected_instances(mask: np.ndarray) -> np.ndarray:
    """Ground-truth instances of a binary mask (H, W): its 8-connected components.

    Returns an indexed map (H, W) int32: 0 background, 1..K the components (in scan order).
    """
    m = _as_bool_mask(mask, "mask").astype(np.uint8)
    _, labels = cv2.connectedComponents(m, connectivity=8)
    return labels.astype(np.int32)


def instance_ious(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of every predicted instance with every ground-truth one -> (P, G) float.

    ``pred`` and ``gt`` are indexed maps (H, W) of the same shape (0 background, labels > 0
    the instances, below 0 background too; labels need not be consecutive: the present ones, sorted, are the rows and
    columns).
    """
    p = np.asarray(pred)
    g = np.asarray(gt)
    if p.shape != g.shape or p.ndim != 2:
        raise ValueError(f"instance maps must be 2-D of one shape, got {p.shape} and {g.shape}")
    p = np.maximum(p.astype(np.int64, copy=False), 0)  # labels <= 0: background
    g = np.maximum(g.astype(np.int64, copy=False), 0)
    pmax, gmax = (int(m.max(initial=0)) for m in (p, g))
    if (pmax + 1) * (gmax + 1) <= 1 << 20:  # small labels: one histogram of the label pairs
        joint = np.bincount((p * (gmax + 1) + g).ravel(), minlength=(pmax + 1) * (gmax + 1))
        joint = joint.reshape(pmax + 1, gmax + 1)
        present_p = np.flatnonzero(joint[1:].any(1)) + 1  # the labels present, sorted
        present_g = np.flatnonzero(joint[:, 1:].any(0)) + 1
        joint = joint[np.r_[0, present_p]][:, np.r_[0, present_g]]
    else:  # large labels: their ranks among the present ones first
        p_ids, p_idx = np.unique(p, return_inverse=True)
        g_ids, g_idx = np.unique(g, return_inverse=True)
        p_idx, g_idx = p_idx.reshape(p.shape), g_idx.reshape(g.shape)
        if p_ids[0] != 0:  # no background: rank 0 stays the (empty) background row
            p_idx += 1
        if g_ids[0] != 0:
            g_idx += 1
        n_p, n_g = int(p_idx.max()) + 1, int(g_idx.max()) + 1
        joint = np.bincount((p_idx * n_g + g_idx).ravel(), minlength=n_p * n_g).reshape(n_p, n_g)
    if joint.shape[0] == 1 or joint.shape[1] == 1:
        return np.zeros((joint.shape[0] - 1, joint.shape[1] - 1))
    inter = joint[1:, 1:].astype(np.float64)
    p_area = joint[1:, :].sum(1)[:, None]
    g_area = joint[:, 1:].sum(0)[None, :]
    return inter / (p_area + g_area - inter)


def match_instances(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> dict:
    """Greedy one-to-one matching of indexed maps at IoU >= ``threshold``.

    Pairs are taken by decreasing IoU (ties: lower predicted, then lower ground-truth label),
    each instance at most once. Returns ``{"found", "predicted", "ground_truth"}`` counts.
    """
    ious = instance_ious(pred, gt)
    n_pred, n_gt = ious.shape
    pairs = [(-ious[i, j], i, j) for i, j in zip(*np.nonzero(ious >= threshold), strict=True)]
    used_p, used_g = set(), set()
    for _, i, j in sorted(pairs):
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
    return {"found": len(used_g), "predicted": n_pred, "ground_truth": n_gt}


class InstanceMeter:
    """Accumulates instance precision / recall of one object over its test images."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.found = self.predicted = self.ground_truth = self.n_images = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> dict:
        """Add one image: indexed maps ``pred``, ``gt`` (H, W). Returns its counts."""
        counts = match_instances(pred, gt, self.threshold)
        self.found += counts["found"]
        self.predicted += counts["predicted"]
        self.ground_truth += counts["ground_truth"]
        self.n_images += 1
        return counts

    def result(self) -> dict:
        """``precision``, ``recall``, ``f1`` (0.0 where a denominator is 0) and the counts."""
        precision = self.found / self.predicted if self.predicted else 0.0
        recall = self.found / self.ground_truth if self.ground_truth else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "found": self.found,
            "predicted": self.predicted,
            "ground_truth": self.ground_truth,
            "n_images": self.n_images,
        }
