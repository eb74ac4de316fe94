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


class GuidedAttention(Attention):
    """SAM's `Attention` whose weights are re-weighted by `self.guidance` when it is set.

    With `guidance is None` it runs `segment_anything`'s own forward, unchanged.
    """

    guidance: Tensor | None = None

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.guidance is None:
            return super().forward(q, k, v)
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        attn = guided_weights(q @ k.permute(0, 1, 3, 2) / math.sqrt(q.shape[-1]), self.guidance)
        return self.out_proj(self._recombine_heads(attn @ v))


def guided_weights(logits: Tensor, guidance: Tensor) -> Tensor:
    """PerSAM's attention weights ``softmax(softmax(logits) + guidance)`` over the last dim.

    logits (B, heads, N_tokens, h*w) = Q K^T / sqrt(d); guidance (B or 1, 1, 1, h*w).
    """
    return torch.softmax(torch.softmax(logits, dim=-1) + guidance, dim=-1)


def install(transformer: TwoWayTransformer, cls: type = GuidedAttention) -> list:
    """Turn every block's token-to-image cross-attention into a `cls` in place.

    `cls` subclasses the attention's own class (`GuidedAttention` for `segment_anything`'s;
    another backbone's decoder names its own). The modules keep their parameters (state-dict
    keys are unchanged); returns them.
    """
    guided = []
    for block in transformer.layers:
        attn = block.cross_attn_token_to_image
        if not isinstance(attn, cls):
            if not isinstance(attn, cls.__mro__[1]):
                raise TypeError(f"{cls.__name__} cannot guide a {type(attn).__name__}")
            attn.__class__ = cls
        guided.append(attn)
    return guided
