"""Mask losses shared by the PerSAM-F fit and the embedded SAM's training: dice and focal.

A *map* is the last two dimensions of ``logits`` (..., H, W); each loss returns one value per
map, shape (...). The PerSAM-F fit flattens its one mixed map to (1, H*W): one 1 x N map, so
the loss is a scalar, as the official ``persam_f.py`` computes it (its batch of one mask,
divided by ``num_masks = 1``). ``weight`` (broadcastable to ``logits``, 1 on valid pixels, 0 on
padding) restricts a loss to the valid pixels of a padded batch; ``None`` counts every pixel.
"""

from __future__ import annotations

from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

__all__ = ["dice_loss", "focal_loss", "mask_iou"]

_MAP = (-2, -1)


def dice_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` per map, ``p = sigmoid(logits)``.

    logits (..., H, W); target {0, 1} float broadcastable to it -> (...).
    """
    prob = logits.sigmoid()
    target = target.expand_as(logits)
    if weight is not None:
        prob, target = prob * weight, target * weight
    numerator = 2 * (prob * target).sum(_MAP)
    denominator = prob.sum(_MAP) + target.sum(_MAP)
    return 1 - (numerator + 1) / (denominator + 1)


def focal_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    weight: Tensor | None = None,
) -> Tensor:
    """Sigmoid focal loss (Lin et al., ``torchvision.ops.sigmoid_focal_loss``), the mean over
    each map's (valid) pixels: logits (..., H, W), target broadcastable -> (...).

    ``alpha`` weighs the foreground (``alpha``) against the background (``1 - alpha``);
    ``alpha = -1`` weighs them alike.
    """
    loss = sigmoid_focal_loss(logits, target.expand_as(logits), alpha, gamma, reduction="none")
    if weight is None:
        return loss.mean(_MAP)
    return (loss * weight).sum(_MAP) / weight.sum(_MAP).clamp_min(1.0)


def mask_iou(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """IoU of the binarised prediction (logit > 0) with the target, valid pixels only: what
    SAM's IoU head regresses. logits (..., H, W), target and weight broadcastable -> (...)."""
    pred = (logits > 0).float() * weight
    target = target.expand_as(logits) * weight
    inter = (pred * target).sum(_MAP)
    union = (pred + target - pred * target).sum(_MAP)
    return inter / union.clamp_min(1.0)
