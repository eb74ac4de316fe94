"""Hugging Face `transformers`' `SamModel` behind `segment_anything`'s interface (`backbone=hf_sam`).

`HFSam` is a `segment_anything.modeling.Sam` whose image encoder, prompt encoder and mask decoder
are thin adapters around the `SamModel`'s own modules (extra `persam[hf_sam]`), so
`segment_anything.SamPredictor`, the embedding cache, the location prior and the refinement run
on it unchanged. Checkpoints: a `segment_anything` state dict (mapped by `sam_to_hf_keys`) or
a `SamModel` state dict.

PerSAM's decoder additions go in through `GuidedSamAttention` (a subclass of HF's `SamAttention`)
and forward pre-hooks (`persam.model.semantic_prompt.SemanticPrompt` with HF's argument names), in the
official form. HF's own `attention_similarity` / `target_embedding` arguments are not used: the
first is a bias added to the attention logits before the softmax,
``softmax(Q K^T / sqrt(d) + sim)``, where PerSAM adds the similarity to the attention
*probabilities*, ``softmax(softmax(Q K^T / sqrt(d)) + sim)``; the second is added to the queries
before every block but neither to their positional encoding on entry nor to the final
token-to-image attention's queries, as PerSAM does.
"""

from __future__ import annotations

import re

import torch
from segment_anything.modeling import Sam
from torch import Tensor, nn

from persam.backbones.sam import (
    PIXEL_MEAN,
    PIXEL_STD,
    check_checkpoint_path,
    finish,
    is_random,
    require,
)
from persam.model.guided_attention import guided_weights

EXTRA = "hf-sam"


def _transformers():
    return require("transformers", EXTRA, "hf_sam")


def hf_config(
    encoder_embed_dim: int,
    encoder_depth: int,
    encoder_num_heads: int,
    encoder_global_attn_indexes,
    window_size: int = 14,
    image_size: int = 1024,
    vit_patch_size: int = 16,
    prompt_embed_dim: int = 256,
    mask_in_chans: int = 16,
    decoder_depth: int = 2,
    decoder_mlp_dim: int = 2048,
    decoder_num_heads: int = 8,
    num_multimask_outputs: int = 3,
    iou_head_depth: int = 3,
    iou_head_hidden_dim: int = 256,
):
    """A `transformers.SamConfig` for the base config's architecture fields."""
    transformers = _transformers()
    return transformers.SamConfig(
        vision_config=dict(
            hidden_size=encoder_embed_dim,
            num_hidden_layers=encoder_depth,
            num_attention_heads=encoder_num_heads,
            global_attn_indexes=list(encoder_global_attn_indexes),
            window_size=window_size,
            image_size=image_size,
            patch_size=vit_patch_size,
            output_channels=prompt_embed_dim,
            mlp_dim=encoder_embed_dim * 4,
            num_pos_feats=prompt_embed_dim // 2,
            # HF's default (1e-10) leaves random encoder weights ~0; checkpoints overwrite it.
            initializer_range=0.02,
        ),
        prompt_encoder_config=dict(
            hidden_size=prompt_embed_dim,
            image_size=image_size,
            patch_size=vit_patch_size,
            mask_input_channels=mask_in_chans,
        ),
        mask_decoder_config=dict(
            hidden_size=prompt_embed_dim,
            mlp_dim=decoder_mlp_dim,
            num_hidden_layers=decoder_depth,
            num_attention_heads=decoder_num_heads,
            num_multimask_outputs=num_multimask_outputs,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim,
        ),
    )


# -- segment_anything -> transformers parameter names --------------------------------------------

_RENAMES = [
    (r"^image_encoder\.", "vision_encoder."),
    (r"^vision_encoder\.patch_embed\.proj\.", "vision_encoder.patch_embed.projection."),
    (r"^vision_encoder\.blocks\.(\d+)\.norm(\d)\.", r"vision_encoder.layers.\1.layer_norm\2."),
    (r"^vision_encoder\.blocks\.", "vision_encoder.layers."),
    (r"^vision_encoder\.neck\.0\.", "vision_encoder.neck.conv1."),
    (r"^vision_encoder\.neck\.1\.", "vision_encoder.neck.layer_norm1."),
    (r"^vision_encoder\.neck\.2\.", "vision_encoder.neck.conv2."),
    (r"^vision_encoder\.neck\.3\.", "vision_encoder.neck.layer_norm2."),
    (r"^prompt_encoder\.point_embeddings\.", "prompt_encoder.point_embed."),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (
        r"^mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)\.",
        r"mask_decoder.transformer.layers.\1.layer_norm\2.",
    ),
    (
        r"^mask_decoder\.transformer\.norm_final_attn\.",
        "mask_decoder.transformer.layer_norm_final_attn.",
    ),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
]
_MLP = re.compile(
    r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.layers\.(\d+)\.(.*)$"
)
_POSITIONAL = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"


def sam_to_hf_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A `segment_anything` `Sam` state dict renamed to `transformers.SamModel`'s names.

    SAM's MLPs (`layers.0 .. layers.n-1`) become HF's `proj_in`, `layers.0 .. n-3`, `proj_out`;
    the random-Fourier positional matrix goes to both of HF's (tied) copies.
    """
    depth: dict[str, int] = {}
    for key in state:
        match = _MLP.match(key)
        if match:
            depth[match[1]] = max(depth.get(match[1], 0), int(match[2]) + 1)
    out = {}
    for key, value in state.items():
        if key == _POSITIONAL:
            out["shared_image_embedding.positional_embedding"] = value
            out["prompt_encoder.shared_embedding.positional_embedding"] = value
            continue
        match = _MLP.match(key)
        if match:
            prefix, i, rest = match[1], int(match[2]), match[3]
            n = depth[prefix]
            name = "proj_in" if i == 0 else "proj_out" if i == n - 1 else f"layers.{i - 1}"
            out[f"{prefix}.{name}.{rest}"] = value
            continue
        for pattern, replacement in _RENAMES:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


# -- adapters: segment_anything's module interfaces over HF's modules ------------------------------


class HFImageEncoder(nn.Module):
    """`SamVisionEncoder` as SAM's image encoder: (B, 3, S, S) normalised -> (B, C, S/16, S/16)."""

    def __init__(self, vision_encoder: nn.Module, img_size: int) -> None:
        super().__init__()
        self.vision = vision_encoder
        self.img_size = img_size

    def forward(self, x: Tensor) -> Tensor:
        return self.vision(pixel_values=x).last_hidden_state


class HFPromptEncoder(nn.Module):
    """`SamPromptEncoder` with SAM's call: points ((B, N, 2) in the resized frame, (B, N)),
    boxes (B, 4) or (B, 1, 4), masks (B, 1, 256, 256) -> sparse (B, N', C), dense (B, C, h, w)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.prompt = model.prompt_encoder
        self.image_pe = model.shared_image_embedding
        self.embed_dim = model.config.prompt_encoder_config.hidden_size
        # The SamModel computes the image-wide encoding; held outside the module tree.
        object.__setattr__(self, "_model", model)

    def get_dense_pe(self) -> Tensor:
        return self._model.get_image_wide_positional_embeddings()

    def forward(self, points, boxes, masks) -> tuple[Tensor, Tensor]:
        coords, labels = points if points is not None else (None, None)
        sparse, dense = self.prompt(
            input_points=None if coords is None else coords[:, None],
            input_labels=None if labels is None else labels[:, None],
            # SAM's boxes come as (B, 4) or (B, 1, 4); HF's are (B, n_boxes, 4).
            input_boxes=None if boxes is None else boxes.reshape(boxes.shape[0], -1, 4),
            input_masks=masks,
        )
        if sparse is None:
            batch = dense.shape[0]
            sparse = torch.empty((batch, 0, self.embed_dim), device=dense.device)
        else:
            sparse = sparse[:, 0]
        return sparse, dense


class HFMaskDecoder(nn.Module):
    """`SamMaskDecoder` with SAM's call and outputs: masks (B, M, 4h, 4w), iou (B, M).

    `transformer` is HF's two-way transformer, where PerSAM's additions are installed
    (`guided_attention_class`, `semantic_prompt_names`: read by `persam.model.decoder.personalize`).
    """

    semantic_prompt_names = dict(tokens="point_embeddings", queries="queries", final="query")

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.hf = decoder

    @property
    def transformer(self) -> nn.Module:
        return self.hf.transformer

    @property
    def guided_attention_class(self) -> type:
        return guided_sam_attention_class()

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
    ) -> tuple[Tensor, Tensor]:
        batch = sparse_prompt_embeddings.shape[0]
        if image_embeddings.shape[0] != batch:
            image_embeddings = image_embeddings.expand(batch, -1, -1, -1)
        masks, iou = self.hf(
            image_embeddings=image_embeddings,
            image_positional_embeddings=image_pe.expand(batch, -1, -1, -1),
            sparse_prompt_embeddings=sparse_prompt_embeddings[:, None],
            dense_prompt_embeddings=dense_prompt_embeddings,
            multimask_output=multimask_output,
        )
        return masks[:, 0], iou[:, 0]


_GUIDED: dict[str, type] = {}


def guided_sam_attention_class() -> type:
    """HF's `SamAttention` with PerSAM's target-guided weights when `guidance` is set."""
    if "cls" in _GUIDED:
        return _GUIDED["cls"]
    SamAttention = require("transformers.models.sam.modeling_sam", EXTRA, "hf_sam").SamAttention

    class GuidedSamAttention(SamAttention):
        guidance: Tensor | None = None

        def forward(self, query, key, value, attention_similarity=None, **kwargs):
            if self.guidance is None:
                return super().forward(query, key, value, attention_similarity, **kwargs)
            point_batch = query.shape[1]
            q = self._separate_heads(self.q_proj(query), self.num_attention_heads)
            k = self._separate_heads(self.k_proj(key), self.num_attention_heads)
            v = self._separate_heads(self.v_proj(value), self.num_attention_heads)
            weights = guided_weights(q @ k.transpose(2, 3) * self.scaling, self.guidance)
            out = (weights @ v).transpose(1, 2)
            return self.out_proj(self._recombine_heads(out, point_batch)), weights

    _GUIDED["cls"] = GuidedSamAttention
    return GuidedSamAttention


class HFSam(Sam):
    """A `Sam` over a `transformers.SamModel` (`self.hf_model`, which shares its parameters)."""

    def __init__(self, model: nn.Module) -> None:
        size = model.config.vision_config.image_size
        super().__init__(
            image_encoder=HFImageEncoder(model.vision_encoder, size),
            prompt_encoder=HFPromptEncoder(model),
            mask_decoder=HFMaskDecoder(model.mask_decoder),
            pixel_mean=list(PIXEL_MEAN),
            pixel_std=list(PIXEL_STD),
        )
        object.__setattr__(self, "hf_model", model)

    def hf_state_dict(self) -> dict[str, Tensor]:
        return self.hf_model.state_dict()


def build_hf_sam(
    name: str = "hf_sam",
    checkpoint: str | None = None,
    seed: int = 0,
    device: str = "auto",
    **architecture,
) -> HFSam:
    """A frozen `HFSam` of the base config's architecture fields; `checkpoint` is a
    `segment_anything` state dict (or a `SamModel` one), or `random`."""
    transformers = _transformers()
    if not is_random(checkpoint):
        check_checkpoint_path(checkpoint, name)
    config = hf_config(**architecture)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.SamModel(config)
    sam = HFSam(model)
    return finish(sam, name, checkpoint, device, target=model, rename=_rename_for_hf)


def _rename_for_hf(state: dict) -> dict:
    """Checkpoint names -> `SamModel`'s: SAM layout is mapped, HF layout kept."""
    if any(str(k).startswith("image_encoder.") for k in state):
        return sam_to_hf_keys(state)
    return state
