"""J&F as the DAVIS 2017 semi-supervised benchmark defines it.

Per object and frame (H x W label maps; `void` = pixels labelled 255 in the ground truth, which
count for neither side):

* J = region similarity = |pred & gt| / |pred | gt|, and 1 when both are empty.
* F = boundary F-measure: the one-pixel boundaries of both masks, each matched to the other's
  boundary dilated by a disk of radius ceil(0.008 x image diagonal); precision and recall of
  the matches, F = 2PR / (P + R) (P = 1, R = 0 when only the prediction has no boundary, the
  reverse when only the ground truth has none, both 1 when neither has one).

The first and last frames are not scored. Per object: the mean over the scored frames, the
recall (fraction of frames above 0.5) and the decay (mean of the first quarter of the frames
minus that of the last quarter, DAVIS's binning). A sequence's J and F are the means over its
objects; the overall J, F and J&F are means over *all objects*, not over sequences. Fractions
in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

BOUNDARY_TOLERANCE = 0.008
VOID = 255


def region_similarity(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """J of bool masks (H, W); `void` (H, W) bool pixels are ignored. 1 when both are empty."""
    if void is not None:
        pred, gt = pred & ~void, gt & ~void
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a bool mask (H, W): pixels that differ from their right, lower or
    lower-right neighbour (outside the image counts as background; in the last row only the
    right neighbour and in the last column only the lower one count; the corner is never a
    boundary). Offset half a pixel towards the origin, as in the Berkeley/DAVIS `seg2bmap`."""
    seg = mask.astype(bool)
    padded = np.pad(seg, ((0, 1), (0, 1)))
    right, down, diag = padded[:-1, 1:], padded[1:, :-1], padded[1:, 1:]
    b = (seg ^ right) | (seg ^ down) | (seg ^ diag)
    b[-1, :] = seg[-1, :] ^ right[-1, :]
    b[:, -1] = seg[:, -1] ^ down[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) uint8 disk: 1 where x^2 + y^2 <= r^2."""
    r = np.arange(-radius, radius + 1)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2).astype(np.uint8)


def boundary_tolerance(shape: tuple[int, int], tolerance: float = BOUNDARY_TOLERANCE) -> int:
    """Boundary match radius in pixels: ceil(tolerance x image diagonal) (>= 1 taken as pixels)."""
    if tolerance >= 1:
        return int(tolerance)
    return int(math.ceil(tolerance * math.hypot(*shape[:2])))


def boundary_f(
    pred: np.ndarray,
    gt: np.ndarray,
    void: np.ndarray | None = None,
    tolerance: float = BOUNDARY_TOLERANCE,
) -> float:
    """F of bool masks (H, W) (boundary precision/recall within the tolerance disk)."""
    if void is not None:
        pred, gt = pred & ~void, gt & ~void
    pb, gb = boundary_map(pred), boundary_map(gt)
    kernel = disk(boundary_tolerance(pred.shape, tolerance))
    p_dil = cv2.dilate(pb.astype(np.uint8), kernel).astype(bool)
    g_dil = cv2.dilate(gb.astype(np.uint8), kernel).astype(bool)
    n_p, n_g = np.count_nonzero(pb), np.count_nonzero(gb)
    if n_p == 0 and n_g == 0:
        precision, recall = 1.0, 1.0
    elif n_p == 0:
        precision, recall = 1.0, 0.0
    elif n_g == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = np.count_nonzero(pb & g_dil) / n_p
        recall = np.count_nonzero(gb & p_dil) / n_g
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def statistics(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, recall, decay) of per-frame values, as DAVIS's `db_statistics`.

    recall = fraction of values > 0.5; decay = mean of the first of 4 bins minus the mean of the
    last, the bin edges being round(linspace(1, N, 5)) - 1 (inclusive, so bins share an edge).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(np.mean(v))
    recall = float(np.mean(v > 0.5))
    ids = (np.round(np.linspace(1, v.size, 5) + 1e-10) - 1).astype(np.int64)
    bins = [v[ids[i] : ids[i + 1] + 1] for i in range(4)]
    decay = float(np.mean(bins[0]) - np.mean(bins[3]))
    return mean, recall, decay


@dataclass
class ObjectScores:
    """Per-frame J and F of one object over the scored frames."""

    j: list[float]
    f: list[float]

    def summary(self) -> dict[str, float]:
        jm, jr, jd = statistics(self.j)
        fm, fr, fd = statistics(self.f)
        return {
            "j_mean": jm,
            "f_mean": fm,
            "j_recall": jr,
            "f_recall": fr,
            "j_decay": jd,
            "f_decay": fd,
        }


def score_frame(
    pred: np.ndarray, gt: np.ndarray, object_ids: Sequence[int], tolerance=BOUNDARY_TOLERANCE
) -> dict[int, tuple[float, float]]:
    """(J, F) per object id of one frame: label maps pred, gt (H, W)."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction is {pred.shape} but the ground truth is {gt.shape}")
    void = gt == VOID
    void = void if void.any() else None
    out = {}
    for obj in object_ids:
        p, g = pred == obj, gt == obj
        out[int(obj)] = (region_similarity(p, g, void), boundary_f(p, g, void, tolerance))
    return out


class SequenceScorer:
    """Accumulates J and F per object over a sequence's frames; frame 0 and the last skipped.

    `add(index, pred, gt)` for every frame as it comes (index 0 .. T-1); the caller says how many
    frames there are, so the last one is known in advance.
    """

    def __init__(self, object_ids: Sequence[int], num_frames: int, tolerance=BOUNDARY_TOLERANCE):
        self.object_ids = [int(o) for o in object_ids]
        self.num_frames = num_frames
        self.tolerance = tolerance
        self.objects = {o: ObjectScores([], []) for o in self.object_ids}

    def scored(self, index: int) -> bool:
        return 0 < index < self.num_frames - 1

    def add(self, index: int, pred: np.ndarray, gt: np.ndarray) -> None:
        if not self.scored(index):
            return
        for obj, (j, f) in score_frame(pred, gt, self.object_ids, self.tolerance).items():
            self.objects[obj].j.append(j)
            self.objects[obj].f.append(f)

    def result(self) -> dict:
        """{"jf", "j_mean", "f_mean", "objects": {id: {...}}}; None values when nothing scored."""
        objects = {str(o): _clean(s.summary()) for o, s in self.objects.items()}
        j = [v["j_mean"] for v in objects.values() if v["j_mean"] is not None]
        f = [v["f_mean"] for v in objects.values() if v["f_mean"] is not None]
        out = {"jf": None, "j_mean": None, "f_mean": None, "objects": objects}
        if j and f:
            out.update(j_mean=float(np.mean(j)), f_mean=float(np.mean(f)))
            out["jf"] = (out["j_mean"] + out["f_mean"]) / 2
        return out


def overall(sequences: dict[str, dict]) -> dict[str, float | None]:
    """Overall J, F, J&F: means over all objects of all scored sequences."""
    j, f = [], []
    for entry in sequences.values():
        for obj in (entry.get("objects") or {}).values():
            if obj.get("j_mean") is not None and obj.get("f_mean") is not None:
                j.append(obj["j_mean"])
                f.append(obj["f_mean"])
    if not j:
        return {"jf": None, "j_mean": None, "f_mean": None, "n_scored_objects": 0}
    jm, fm = float(np.mean(j)), float(np.mean(f))
    return {"jf": (jm + fm) / 2, "j_mean": jm, "f_mean": fm, "n_scored_objects": len(j)}


def _clean(d: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if v is None or math.isnan(v) else float(v)) for k, v in d.items()}
