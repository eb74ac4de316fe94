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


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """(x_min, y_min, x_max, y_max) of a bool mask (H, W), or None when it is empty."""
    y, x = np.nonzero(mask)
    if x.size == 0:
        return None
    return np.array([x.min(), y.min(), x.max(), y.max()])


@dataclass
class Refinement:
    """The result of the refinement passes; `steps[i]` = (mask (H, W), best index)."""

    mask: np.ndarray
    logits: np.ndarray  # 1 x 256 x 256 low-res logits of `mask`
    steps: list[tuple[np.ndarray, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def cascaded_refinement(
    predictor: SamPredictor,
    coords: np.ndarray | None,
    labels: np.ndarray | None,
    mask: np.ndarray,
    logits: np.ndarray,
    steps: int = 2,
    box_on_first: bool = False,
) -> Refinement:
    """Refine `mask` (H, W) with low-res `logits` (1, 256, 256) by `steps` (0, 1 or 2) passes."""
    result = Refinement(mask=mask, logits=logits)
    for step in range(1, steps + 1):
        box = None
        if step > 1 or box_on_first:
            box = mask_box(result.mask)
            if box is None:
                msg = f"refinement step {step}: the previous mask is empty, so no box prompt; ran without it"
                log.warning(msg)
                result.warnings.append(msg)
        masks, scores, low_res = predictor.predict(
            point_coords=coords if coords is not None and len(coords) else None,
            point_labels=labels if labels is not None and len(labels) else None,
            box=None if box is None else box[None, :],
            mask_input=result.logits,
            multimask_output=True,
        )
        best = int(np.argmax(scores))
        result.mask, result.logits = masks[best], low_res[best : best + 1]
        result.steps.append((result.mask, best))
    return result
