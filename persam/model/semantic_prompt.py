"""Paper section 3.1 — target-semantic prompting.

The target embedding (1, 1, C) is added to the decoder's prompt tokens. In SAM's two-way
transformer the tokens are both the queries and their positional encoding, so, as in the
official code, the embedding is added to the tokens on entry (queries and their encoding), to
the queries again before every later block, and to the queries of the final token-to-image
attention. Implemented with forward pre-hooks on `segment_anything`'s modules (or on another
two-way transformer of the same layout, given its argument names).
"""

from __future__ import annotations

from segment_anything.modeling.transformer import TwoWayTransformer
from torch import Tensor


class SemanticPrompt:
    """Holds the current target embedding and the hooks that add it; `None` turns it off."""

    def __init__(
        self,
        transformer: TwoWayTransformer,
        tokens: str = "point_embedding",
        queries: str = "queries",
        final: str = "q",
    ) -> None:
        """`tokens`, `queries`, `final`: the keyword names of the prompt tokens (transformer),
        the block's queries and the final attention's queries (segment_anything's defaults)."""
        self.names = dict(tokens=tokens, queries=queries, final=final)
        self.embedding: Tensor | None = None
        self.handles = [transformer.register_forward_pre_hook(self._on_tokens, with_kwargs=True)]
        for block in list(transformer.layers)[1:]:
            self.handles.append(block.register_forward_pre_hook(self._on_block, with_kwargs=True))
        self.handles.append(
            transformer.final_attn_token_to_image.register_forward_pre_hook(
                self._on_final, with_kwargs=True
            )
        )

    def _on_tokens(self, module, args, kwargs):
        if self.embedding is None:
            return None
        if len(args) == 3:
            image_embedding, image_pe, point_embedding = args
            return (image_embedding, image_pe, point_embedding + self.embedding), kwargs
        return args, self._add(kwargs, "tokens")

    def _on_block(self, module, args, kwargs):
        if self.embedding is None:
            return None
        return args, self._add(kwargs, "queries")

    def _on_final(self, module, args, kwargs):
        if self.embedding is None:
            return None
        return args, self._add(kwargs, "final")

    def _add(self, kwargs: dict, which: str) -> dict:
        name = self.names[which]
        return dict(kwargs, **{name: kwargs[name] + self.embedding})

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
