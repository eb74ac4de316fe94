"""The identity-matching loss on the encoder features (what PerSAM's location prior needs).

The mask losses (focal, dice, the IoU-head target) are `persam.model.losses`, shared with PerSAM-F.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cell_membership(frac: Tensor) -> Tensor:
    """Cells that count as inside a mask (coverage >= 1/2; the best cell if none) -> bool."""
    inside = frac >= 0.5
    best = F.one_hot(frac.argmax(-1), frac.shape[-1]).bool()
    empty = ~inside.any(-1, keepdim=True)
    return inside | (best & empty)


def prototypes(features: Tensor, inside: Tensor) -> Tensor:
    """Mean feature inside each mask, as PerSAM's target embedding: (N, C, P), (N, P) -> (N, C)."""
    w = inside.float()
    return (features * w[:, None]).sum(-1) / w.sum(-1, keepdim=True).clamp_min(1.0)[:, :]


def similarity(features: Tensor, protos: Tensor) -> Tensor:
    """Cosine similarity of every prototype with every feature: (N, C, P), (N, C) -> (N, N, P)."""
    f = F.normalize(features, dim=1)
    p = F.normalize(protos, dim=1)
    return torch.einsum("nc,mcp->nmp", p, f)


def identity_loss(
    sim: Tensor,
    frac: Tensor,
    valid: Tensor,
    identity: Tensor,
    scale: Tensor,
    bias: Tensor,
    temperature: float = 0.1,
) -> dict[str, Tensor]:
    """Make the location prior's similarity map find the object of the same identity.

    Args:
      sim: (N, N, P) cosine similarity of image n's mask prototype with image m's features.
      frac: (N, P) coverage of each feature cell by image m's mask; valid: (N, P) bool cells
        inside the unpadded image; identity: (N,) identity of each image.
      scale, bias: the logit = scale * sim + bias of the BCE term (learned, SigLIP-style).

    Returns `bce` (per map, balanced between the object's cells and the others; maps of images
    without the identity are all negatives) and `nce` (for pairs of different images of one
    identity: softmax over image m's cells of sim / temperature, -log of the mass on the object:
    the arg-max, PerSAM's positive point, is pulled inside the object).
    """
    n = sim.shape[0]
    same = identity[:, None] == identity[None, :]  # (N, N)
    target = same[:, :, None].float() * frac[None]  # (N, N, P)
    w = valid[None].float().expand_as(sim)
    logits = scale * sim + bias
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * w
    pos_w = (target * w).sum(-1).clamp_min(1e-6)
    neg_w = ((1 - target) * w).sum(-1).clamp_min(1e-6)
    balanced = 0.5 * ((bce * target).sum(-1) / pos_w + (bce * (1 - target)).sum(-1) / neg_w)
    plain = bce.sum(-1) / w.sum(-1).clamp_min(1.0)
    bce_loss = torch.where(same, balanced, plain).mean()

    pair = same & ~torch.eye(n, dtype=torch.bool, device=sim.device)
    inside = cell_membership(frac)[None].expand_as(sim)
    z = (sim / temperature).masked_fill(~valid[None].expand_as(sim), float("-inf"))
    pos = z.masked_fill(~inside, float("-inf"))
    nce = torch.logsumexp(z, -1) - torch.logsumexp(pos, -1)
    nce_loss = nce[pair].mean() if pair.any() else sim.sum() * 0.0

    # diagnostics: how often the arg-max of another scene's map lands inside the object
    with torch.no_grad():
        top = z.argmax(-1, keepdim=True)
        hit = inside.gather(-1, top).squeeze(-1)
        hit_rate = hit[pair].float().mean() if pair.any() else torch.zeros(())
    return {"bce": bce_loss, "nce": nce_loss, "argmax_hit": hit_rate}
