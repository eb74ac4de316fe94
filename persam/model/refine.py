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

from persam.model.decoder import decode

log = logging.getLogger(__name__)


def mask_box(mask: np.ndarray, margin: int = 0) -> np.ndarray | None:
    """(x_min, y_min, x_max, y_max) of a bool mask (H, W), or None when it is empty.

    `margin` > 0 expands the box as the official video scripts do: each side moves out by
    `margin`, the minima clip at 0 and the maxima at W and H (not W - 1 and H - 1).
    """
    mask = np.asarray(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    box = np.array([cols[0], rows[0], cols[-1], rows[-1]])
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
    has_points = coords is not None and len(coords) > 0
    (result,) = cascaded_refinement_batch(
        predictor,
        coords[None] if has_points else None,
        labels[None] if has_points else None,
        mask[None],
        logits[None],
        steps=steps,
        box_on_first=box_on_first,
        keep_logits=keep_logits,
        on_empty=on_empty,
    )
    return result


def cascaded_refinement_batch(
    predictor: SamPredictor,
    coords: np.ndarray | None,
    labels: np.ndarray | None,
    masks: np.ndarray,
    logits: np.ndarray,
    steps: int = 2,
    box_on_first: bool = False,
    keep_logits: bool = False,
    on_empty: str = "no_box",
) -> list[Refinement]:
    """`cascaded_refinement` of B objects on one image, each pass one decoder call for all.

    coords (B, N, 2) or None, labels (B, N), masks (B, H, W), logits (B, 1, h, w) -> one
    `Refinement` per object. Objects whose box prompt is missing (empty mask, `no_box`) go
    through that pass in a second call without a box.
    """
    if on_empty not in ("no_box", "raise"):
        raise ValueError(f"on_empty must be no_box or raise, got {on_empty!r}")
    results = [Refinement(mask=m, logits=lg) for m, lg in zip(masks, logits, strict=True)]
    for step in range(1, steps + 1):
        boxes: list[np.ndarray | None] = [None] * len(results)
        if step > 1 or box_on_first:
            for b, result in enumerate(results):
                boxes[b] = mask_box(result.mask)
                if boxes[b] is None:
                    msg = f"refinement step {step}: the previous mask is empty, so no box prompt"
                    if on_empty == "raise":
                        raise EmptyMaskError(msg)
                    msg += "; ran without it"
                    log.warning(msg)
                    result.warnings.append(msg)
        last = step == steps and keep_logits
        with_box = [b for b, box in enumerate(boxes) if box is not None]
        without = [b for b, box in enumerate(boxes) if box is None]
        for group in (with_box, without):
            if not group:
                continue
            out, scores, low_res = decode(
                predictor,
                None if coords is None else coords[group],
                None if labels is None else labels[group],
                np.stack([boxes[b] for b in group]) if group is with_box else None,
                np.stack([results[b].logits for b in group]),
                return_logits=last,
                best_only=True,  # only the best mask of each pass is used
            )
            for k, b in enumerate(group):
                result = results[b]
                best = int(np.argmax(scores[k]))
                mask = out[k]
                if last:
                    result.high_res = mask
                    mask = mask > predictor.model.mask_threshold
                result.mask, result.logits = mask, low_res[k, best : best + 1]
                result.steps.append((result.mask, best))
                result.scores.append(scores[k])
                result.boxes.append(boxes[b])
    return results
