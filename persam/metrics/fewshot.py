"""Few-shot benchmarks (FSS-1000, COCO-20i, LVIS-92i) are scored as HSNet's evaluator does
(:func:`episode_areas`, :func:`fewshot_scores`): per class, the sum of the foreground
intersections over the sum of the foreground unions of its episodes; ``miou`` the mean over the
fold's classes that scored at least one episode; ``fbiou`` the mean of the foreground IoU and
the background IoU, each summed over all the scored episodes of the fold's classes.

A class with no scored episode (none drawn, or every one of its episodes failed on bad data) has
no IoU (None): it is left out of the mean and listed in ``classes_without_episodes``. HSNet's
evaluator counts such a class 0; with its protocols (1000 episodes over 20 COCO classes, every
FSS-1000 image once) every class is drawn, so the two rules give the same number there, and
elsewhere a 0 would lower the mean for a class that was never measured.
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

    Each entry (a scored episode) has ``"class"`` and the four areas. A class's IoU is its summed
    foreground intersection over max(summed foreground union, 1); a class without a scored
    episode has ``iou: None`` and is left out of the mean (``miou`` is None when no class
    scored). Returns ``{"miou", "fbiou", "classes": {name: {"iou", "n_episodes"}},
    "classes_without_episodes": [...]}`` (fractions in [0, 1]).
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
        c: {"iou": float(s[0] / max(s[1], 1)) if counts[c] else None, "n_episodes": counts[c]}
        for c, s in sums.items()
    }
    scored = [r["iou"] for r in per_class.values() if r["iou"] is not None]
    total = np.sum(list(sums.values()), axis=0)
    fg = total[0] / total[1] if total[1] else 0.0
    bg = total[2] / total[3] if total[3] else 0.0
    return {
        "miou": float(np.mean(scored)) if scored else None,
        "fbiou": float((fg + bg) / 2) if scored else None,
        "classes": per_class,
        "classes_without_episodes": [c for c in classes if counts[c] == 0],
    }
