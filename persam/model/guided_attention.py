"""Paper section 3.1 — target-guided attention.

The location confidence map (similarity of the target embedding to every image position) is
added to the attention weights of each token-to-image cross-attention in SAM's two-way
transformer: ``attn = softmax(softmax(Q K^T / sqrt(d)) + attn_sim)``. Only the blocks' cross
attentions are guided, not the final token-to-image attention, as in the official code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from segment_anything.modeling.transformer import Attention, TwoWayTransformer
from torch import Tensor


def attention_map(sim: Tensor, grid: tuple[int, int], valid: Tensor | None = None) -> Tensor:
    """Similarity map (H, W) -> attention guidance (1, 1, 1, h*w); a batch (B, H, W) -> (B, 1,
    1, h*w).

    Each map is standardised by its own mean and std, bilinearly resized to the encoder grid
    ``grid = (h, w)``, sigmoid. ``valid`` (B, 2) int: only the top-left (rows, cols) of map ``b``
    is used (the unpadded image of a padded batch). The result broadcasts over the heads and
    tokens of a (B, heads, N_tokens, h*w) attention.
    """
    maps = sim.unsqueeze(0) if sim.dim() == 2 else sim
    out = []
    for b, m in enumerate(maps):
        if valid is not None:
            rows, cols = valid[b].tolist()
            m = m[:rows, :cols]
        m = (m - m.mean()) / torch.std(m).clamp_min(1e-6)
        out.append(F.interpolate(m[None, None], size=grid, mode="bilinear"))
    return torch.cat(out).sigmoid().unsqueeze(1).flatten(3)


class Guided:
    """PerSAM's target-guided attention for any backbone family's attention module: the one
    guided forward. Mixed in before the family's own head adapter and attention class.

    With `guidance is None` it runs the family's own forward, unchanged. Otherwise the queries,
    keys and values are split into heads by the adapter's `heads`, the weights are
    `guided_weights(scale_logits(Q K^T), guidance)` and the adapter's `output` recombines them.
    """

    guidance: Tensor | None = None

    def forward(self, *args, **kwargs):
        if self.guidance is None:
            return super().forward(*args, **kwargs)
        q, k, v, context = self.heads(*args, **kwargs)
        weights = guided_weights(self.scale_logits(q @ k.transpose(-2, -1), q), self.guidance)
        return self.output(weights @ v, weights, context)


class SegmentAnythingHeads:
    """The head adapter of `segment_anything`'s `Attention` (and SAM 2's, which has the same
    interface): q/k/v projections, `_separate_heads`, logits / sqrt(d), `_recombine_heads`."""

    def heads(self, q: Tensor, k: Tensor, v: Tensor):
        split = self._separate_heads
        return (
            split(self.q_proj(q), self.num_heads),
            split(self.k_proj(k), self.num_heads),
            split(self.v_proj(v), self.num_heads),
            None,
        )

    def scale_logits(self, logits: Tensor, q: Tensor) -> Tensor:
        return logits / math.sqrt(q.shape[-1])

    def output(self, out: Tensor, weights: Tensor, context) -> Tensor:
        return self.out_proj(self._recombine_heads(out))


def guided_class(base: type, heads: type = SegmentAnythingHeads) -> type:
    """The guided subclass of a family's attention class `base` (cached: one class per base)."""
    cached = _GUIDED_CLASSES.get((base, heads))
    if cached is None:
        cached = type(f"Guided{base.__name__}", (Guided, heads, base), {})
        _GUIDED_CLASSES[(base, heads)] = cached
    return cached


_GUIDED_CLASSES: dict[tuple[type, type], type] = {}

#: `segment_anything`'s attention, guided.
GuidedAttention = guided_class(Attention)


def guided_weights(logits: Tensor, guidance: Tensor) -> Tensor:
    """PerSAM's attention weights ``softmax(softmax(logits) + guidance)`` over the last dim.

    logits (B, heads, N_tokens, h*w) = Q K^T / sqrt(d); guidance (B or 1, 1, 1, h*w).
    """
    return torch.softmax(torch.softmax(logits, dim=-1) + guidance, dim=-1)


def install(transformer: TwoWayTransformer, cls: type = GuidedAttention) -> list:
    """Turn every block's token-to-image cross-attention into a `cls` in place.

    `cls` subclasses the attention's own class (`GuidedAttention` for `segment_anything`'s;
    another backbone's decoder names its own, made by `guided_class`). The modules keep their parameters (state-dict
    keys are unchanged); returns them.
    """
    guided = []
    for block in transformer.layers:
        attn = block.cross_attn_token_to_image
        if not isinstance(attn, cls):
            if not isinstance(attn, cls.__bases__[-1]):  # the family's attention class
                raise TypeError(f"{cls.__name__} cannot guide a {type(attn).__name__}")
            attn.__class__ = cls
        guided.append(attn)
    return guided
