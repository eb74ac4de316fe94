"""PerSAM-F's mask losses, as the official code computes them (dice + sigmoid focal).

``logits`` and ``target`` are (B, N): B masks of N pixels, ``target`` in {0, 1} (float).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` per mask, summed over masks -> 0-d."""
    p = logits.sigmoid().flatten(1)
    target = target.flatten(1)
    numerator = 2 * (p * target).sum(-1)
    denominator = p.sum(-1) + target.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum()


def focal_loss(logits: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss (Lin et al.), mean over pixels, summed over masks -> 0-d.

    ``alpha < 0`` weighs both classes alike.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean(1).sum()
