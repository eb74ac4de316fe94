"""Paper section 3.1 — cascaded post-refinement.

Two more decoder passes on the same image: the first prompted with the previous mask's
low-res logits (and, for PerSAM-F, the box of its mask), the second with the box of the best
mask so far and its logits. Each pass asks for SAM's three masks and keeps the best-scoring one.
Where the official code would crash on an empty mask (no box), the pass runs without a box and
a warning is recorded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from segment_anything import SamPredictor

log = logging.getLogger(__name__)


def mask_box(mask: np.ndarray, margin: int = 0) -> np.ndarray | None:
    """(x_min, y_min, x_max, y_max) of a bool mask (H, W), or None when it is empty.

    `margin` > 0 expands the box as the official video scripts do: each side moves out by
    `margin`, the minima clip at 0 and the maxima at W and H (not W - 1 and H - 1).
    """
    y, x = np.nonzero(mask)
    if x.size == 0:
        return None
    box = np.array([x.min(), y.min(), x.max(), y.max()])
    if margin:
        h, w = mask.shape
        box = np.array(
            [
                0 if box[0] - margin <= 0 else box[0] - margin,
                0 if box[1] - margin <= 0 else box[1] - margin,
                w if box[2] + margin >= w else box[2] + margin,
                h if box[3] + margin >= h else box[3] + margin,
            ]
        )
    return box


@dataclass
class Refinement:
    """The result of the refinement passes; `steps[i]` = (mask (H, W), best index)."""

    mask: np.ndarray
    logits: np.ndarray  # 1 x 256 x 256 low-res logits of `mask`
    steps: list[tuple[np.ndarray, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)  # (3,) predicted IoUs of each pass
    boxes: list[np.ndarray | None] = field(default_factory=list)  # box prompt of each pass
    high_res: np.ndarray | None = None  # (H, W) logits of `mask` when `keep_logits`


class EmptyMaskError(ValueError):
    """A refinement pass needs the box of an empty mask (`on_empty="raise"`)."""


def cascaded_refinement(
    predictor: SamPredictor,
    coords: np.ndarray | None,
    labels: np.ndarray | None,
    mask: np.ndarray,
    logits: np.ndarray,
    steps: int = 2,
    box_on_first: bool = False,
    keep_logits: bool = False,
    on_empty: str = "no_box",
) -> Refinement:
    """Refine `mask` (H, W) with low-res `logits` (1, 256, 256) by `steps` (0, 1 or 2) passes.

    `keep_logits`: the last pass also returns its full-resolution logits (`high_res`), as the
    video scripts need them to merge objects. `on_empty`: what a pass does when the mask whose
    box it needs is empty: `no_box` (run without a box, record a warning) or `raise`
    (`EmptyMaskError`, where the official code crashes).
    """
    if on_empty not in ("no_box", "raise"):
        raise ValueError(f"on_empty must be no_box or raise, got {on_empty!r}")
    result = Refinement(mask=mask, logits=logits)
    for step in range(1, steps + 1):
        box = None
        if step > 1 or box_on_first:
            box = mask_box(result.mask)
            if box is None:
                msg = f"refinement step {step}: the previous mask is empty, so no box prompt"
                if on_empty == "raise":
                    raise EmptyMaskError(msg)
                msg += "; ran without it"
                log.warning(msg)
                result.warnings.append(msg)
        last = step == steps and keep_logits
        masks, scores, low_res = predictor.predict(
            point_coords=coords if coords is not None and len(coords) else None,
            point_labels=labels if labels is not None and len(labels) else None,
            box=None if box is None else box[None, :],
            mask_input=result.logits,
            multimask_output=True,
            return_logits=last,
        )
        best = int(np.argmax(scores))
        if last:
            result.high_res = masks[best]
            masks = masks > predictor.model.mask_threshold
        result.mask, result.logits = masks[best], low_res[best : best + 1]
        result.steps.append((result.mask, best))
        result.scores.append(scores)
        result.boxes.append(box)
    return result
