"""Few-shot benchmarks (FSS-1000, COCO-20i, LVIS-92i) are scored as HSNet's evaluator does
(:func:`episode_areas`, :func:`fewshot_scores`): per class, the sum of the foreground
intersections over the sum of the foreground unions of its episodes; ``miou`` the mean over the
fold's classes (a class no episode drew counts 0); ``fbiou`` the mean of the foreground IoU and
the background IoU, each summed over all the episodes of the fold's classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from persam.metrics.image import _as_bool_mask

__all__ = ["episode_areas", "fewshot_scores"]


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
