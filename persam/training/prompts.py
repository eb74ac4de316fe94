"""SAM-style prompt sampling from ground-truth masks (all in SAM's input frame, numpy Generators).

Points are (x, y) pixel indices as `SamPredictor` passes them after `ResizeLongestSide`; label 1
is a positive point, 0 a negative one and -1 "no point" (padding, embedded by SAM's prompt
encoder as `not_a_point_embed`). Boxes are (x0, y0, x1, y1).
"""

from __future__ import annotations

import numpy as np
import torch

from persam.model.refine import mask_box

NO_POINT = -1


def random_pixel(region: np.ndarray, rng: np.random.Generator) -> tuple[float, float] | None:
    """A uniformly drawn (x, y) of the True pixels of `region` (h, w), or None if it is empty."""
    ys, xs = np.nonzero(region)
    if xs.size == 0:
        return None
    i = int(rng.integers(xs.size))
    return float(xs[i]), float(ys[i])


def jittered_box(
    mask: np.ndarray, valid: tuple[int, int], rng: np.random.Generator, noise: float = 0.1
) -> np.ndarray:
    """The mask's box with each corner moved by N(0, noise * side), clipped to +-2 sigma (SAM).

    The result stays inside the valid (unpadded) image and keeps x0 < x1, y0 < y1.
    """
    box = mask_box(mask)
    h, w = valid
    if box is None:
        return np.array([0.0, 0.0, w - 1.0, h - 1.0])
    side = np.array([box[2] - box[0], box[3] - box[1]] * 2) + 1.0
    delta = np.clip(rng.normal(0.0, noise, 4), -2 * noise, 2 * noise) * side
    out = box + delta
    out[[0, 2]] = np.clip(out[[0, 2]], 0, w - 1)
    out[[1, 3]] = np.clip(out[[1, 3]], 0, h - 1)
    if out[2] <= out[0]:
        out[[0, 2]] = box[[0, 2]]
    if out[3] <= out[1]:
        out[[1, 3]] = box[[1, 3]]
    return out


class PointSet:
    """Per-sample lists of points of a batch, turned into padded tensors for the prompt encoder."""

    def __init__(self, batch: int) -> None:
        self.points: list[list[tuple[float, float, int]]] = [[] for _ in range(batch)]

    def add(self, i: int, xy: tuple[float, float] | None, label: int) -> None:
        if xy is not None:
            self.points[i].append((xy[0], xy[1], label))

    def copy(self) -> PointSet:
        out = PointSet(len(self.points))
        out.points = [list(p) for p in self.points]
        return out

    def __len__(self) -> int:
        return max((len(p) for p in self.points), default=0)

    def tensors(
        self, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(coords (B, N, 2) float, labels (B, N) int) padded with NO_POINT, or None if empty."""
        n = len(self)
        if n == 0:
            return None
        b = len(self.points)
        coords = torch.zeros(b, n, 2)
        labels = torch.full((b, n), NO_POINT, dtype=torch.long)
        for i, pts in enumerate(self.points):
            for j, (x, y, lab) in enumerate(pts):
                coords[i, j, 0], coords[i, j, 1], labels[i, j] = x, y, lab
        return coords.to(device), labels.to(device)


def initial_points(
    gt: np.ndarray, valid: np.ndarray, rng: np.random.Generator, negative: bool
) -> PointSet:
    """One positive point in each mask (B, S, S); plus one negative in the background if asked."""
    points = PointSet(len(gt))
    for i, mask in enumerate(gt):
        points.add(i, random_pixel(mask, rng), 1)
        if negative:
            h, w = valid[i]
            background = ~mask
            background[h:, :] = False
            background[:, w:] = False
            points.add(i, random_pixel(background, rng), 0)
    return points


def correction_points(
    points: PointSet,
    gt: np.ndarray,
    pred: np.ndarray,
    valid: np.ndarray,
    rng: np.random.Generator,
    scale: float = 1.0,
) -> PointSet:
    """Add one point per sample drawn uniformly from the error region of `pred` (SAM's recipe):
    positive on a false negative pixel, negative on a false positive one (none when perfect).

    `gt`, `pred` (B, s, s) bool and `valid` (B, 2) may be at a lower resolution than the input
    frame: a pixel (x, y) becomes the point at the centre of its `scale` x `scale` block.
    """
    out = points.copy()
    for i in range(len(gt)):
        h, w = valid[i]
        fn = gt[i, :h, :w] & ~pred[i, :h, :w]
        fp = pred[i, :h, :w] & ~gt[i, :h, :w]
        xy = random_pixel(fn | fp, rng)
        if xy is not None:
            label = 1 if fn[int(xy[1]), int(xy[0])] else 0
            out.add(i, ((xy[0] + 0.5) * scale - 0.5, (xy[1] + 0.5) * scale - 0.5), label)
    return out


def boxes_from(
    masks: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray,
    rng: np.random.Generator,
    scale: float = 1.0,
) -> torch.Tensor:
    """Boxes of the predicted `masks` (as PerSAM's refinement does), a jittered box of the
    ground truth `gt` where a prediction is empty -> (B, 4) float in the input frame.

    `masks` may be at a lower resolution: its boxes are scaled by `scale` to the input frame
    (`gt` and `valid` are in the input frame).
    """
    out = []
    for i, mask in enumerate(masks):
        box = mask_box(mask)
        if box is None:
            out.append(jittered_box(gt[i], tuple(valid[i]), rng))
        else:
            out.append(
                np.array(
                    [
                        box[0] * scale,
                        box[1] * scale,
                        (box[2] + 1) * scale - 1,
                        (box[3] + 1) * scale - 1,
                    ]
                )
            )
    return torch.as_tensor(np.stack(out), dtype=torch.float32)


def gt_boxes(gt: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """Jittered ground-truth boxes (B, 4) float."""
    return torch.as_tensor(
        np.stack([jittered_box(m, tuple(valid[i]), rng) for i, m in enumerate(gt)]),
        dtype=torch.float32,
    )
