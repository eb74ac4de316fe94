"""SAM's mask decoder with the two PerSAM additions installed (guided attention, semantic prompt).

`personalize(sam)` installs both once on `sam.mask_decoder`; `decoder.guide(...)` turns them on
for the calls made inside the `with` block, so `segment_anything.SamPredictor` is used unchanged.
Outside a `guide` block (or with both arguments `None`) the decoder is `segment_anything`'s own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from segment_anything.modeling import Sam
from torch import Tensor

from persam.model import guided_attention
from persam.model.semantic_prompt import SemanticPrompt


class PersonalizedDecoder:
    """Handle on a `Sam` whose decoder can be target-guided and target-prompted."""

    def __init__(self, sam: Sam) -> None:
        decoder = sam.mask_decoder
        transformer = decoder.transformer
        # Another backbone's decoder (persam/backbones/hf_sam.py) names its attention subclass and the
        # argument names of its transformer; segment_anything's use the defaults.
        cls = getattr(decoder, "guided_attention_class", guided_attention.GuidedAttention)
        self.attentions = guided_attention.install(transformer, cls)
        self.semantic = SemanticPrompt(transformer, **getattr(decoder, "semantic_prompt_names", {}))

    @contextmanager
    def guide(
        self, attn_sim: Tensor | None = None, target_embedding: Tensor | None = None
    ) -> Iterator[None]:
        """Guide the decoder calls inside the block.

        attn_sim (B, 1, 1, h*w) from `guided_attention.attention_map`; target_embedding (C,) or
        (B, C). B = 1 guides every image/prompt alike (SamPredictor's calls); B > 1 guides the
        b-th image of a batched decoder call with the b-th entries.
        """
        for attn in self.attentions:
            attn.guidance = attn_sim
        self.semantic.embedding = (
            None
            if target_embedding is None
            else target_embedding.reshape(-1, 1, target_embedding.shape[-1])
        )
        try:
            yield
        finally:
            for attn in self.attentions:
                attn.guidance = None
            self.semantic.embedding = None


def personalize(sam: Sam) -> PersonalizedDecoder:
    """Install PerSAM's decoder additions on `sam` (idempotent) and return the handle."""
    handle = getattr(sam, "_persam_decoder", None)
    if handle is None:
        handle = PersonalizedDecoder(sam)
        object.__setattr__(sam, "_persam_decoder", handle)
    return handle
