"""MobileSAM (Zhang et al. 2023): SAM with a TinyViT image encoder, built on `segment_anything`.

Only the image encoder comes from the `mobile_sam` package (PyPI `mobilesam-mirror`, extra
`persam[mobile_sam]`); the prompt encoder, mask decoder and `Sam` are `segment_anything`'s, so
the official MobileSAM checkpoint loads as it is and the project's predictor, embedding cache,
guided attention and semantic prompt apply unchanged.

The package imports `timm` (which it does not declare) and registers its own `tiny_vit_*`
models in timm's model registry on import, replacing timm's. `tiny_vit()` imports it with the
registry saved and restored, so `timm.create_model("tiny_vit_5m_224")` is timm's own model
before and after.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager

import torch
from segment_anything.modeling import Sam

from persam.backbones.sam import (
    PIXEL_MEAN,
    PIXEL_STD,
    BackboneError,
    InputSizeError,
    check_checkpoint_path,
    finish,
    is_random,
    prompt_and_mask_decoder,
    require,
)

EXTRA = "mobile-sam"
# TinyViT's neck reshapes its tokens to a fixed 64 x 64 grid: 1024 px input, 16 px per cell.
IMAGE_SIZE = 1024
GRID = 64


@contextmanager
def preserved_timm_registry():
    """Restore timm's model registry (every module-level table of `timm.models._registry`)
    to its state on entry, in place, when the block exits."""
    registry = require("timm.models._registry", EXTRA, "mobile_sam")
    tables = {
        name: value
        for name, value in vars(registry).items()
        if name.startswith(("_model", "_module", "_deprecated")) and isinstance(value, dict | set)
    }
    saved = {name: copy.copy(value) for name, value in tables.items()}
    for name, value in tables.items():
        if isinstance(value, dict):
            saved[name] = {k: copy.copy(v) for k, v in value.items()}
    try:
        yield
    finally:
        for name, value in tables.items():
            value.clear()
            value.update(saved[name])


def tiny_vit_class() -> type[torch.nn.Module]:
    """MobileSAM's `TinyViT` class, imported without changing timm's registry."""
    require("timm", EXTRA, "mobile_sam")
    with preserved_timm_registry(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = require("mobile_sam.modeling.tiny_vit_sam", EXTRA, "mobile_sam")
    return module.TinyViT


def build_mobile_sam(
    name: str = "mobile_sam",
    checkpoint: str | None = None,
    seed: int = 0,
    device: str = "auto",
    encoder_embed_dim: tuple[int, ...] = (64, 128, 160, 320),
    encoder_depth: tuple[int, ...] = (2, 2, 6, 2),
    encoder_num_heads: tuple[int, ...] = (2, 4, 5, 10),
    encoder_global_attn_indexes: tuple[int, ...] = (),
    window_size: tuple[int, ...] = (7, 7, 14, 7),
    image_size: int = IMAGE_SIZE,
    vit_patch_size: int = IMAGE_SIZE // GRID,
    **decoder,
) -> Sam:
    """A frozen MobileSAM `Sam` (TinyViT encoder -> 1 x 256 x 64 x 64, SAM's decoder).

    The encoder fields are the base config's, one entry per TinyViT stage (embed dims, depths,
    heads, window sizes); `decoder`: the fields of `persam.backbones.sam.prompt_and_mask_decoder`.
    """
    if image_size != IMAGE_SIZE:
        raise InputSizeError(
            f"backbone.image_size={image_size}: MobileSAM's TinyViT encoder takes {IMAGE_SIZE} px "
            f"input only (its neck reshapes to a {GRID} x {GRID} grid). Set "
            f"backbone.image_size={IMAGE_SIZE}."
        )
    if vit_patch_size != IMAGE_SIZE // GRID:
        raise InputSizeError(
            f"backbone.vit_patch_size={vit_patch_size}: MobileSAM's grid cell is "
            f"{IMAGE_SIZE // GRID} px ({IMAGE_SIZE} px input, {GRID} x {GRID} grid)."
        )
    stages = (encoder_embed_dim, encoder_depth, encoder_num_heads, window_size)
    if any(isinstance(v, int) for v in stages) or len({len(v) for v in stages}) != 1:
        raise BackboneError(
            "backbone.encoder_embed_dim, encoder_depth, encoder_num_heads and window_size are "
            f"per TinyViT stage for backbone={name}: lists of one length, got {list(stages)}."
        )
    if list(encoder_global_attn_indexes):
        raise BackboneError(
            f"backbone.encoder_global_attn_indexes={list(encoder_global_attn_indexes)}: TinyViT "
            "has no global-attention blocks; leave it []."
        )
    if encoder_embed_dim[-1] != 320 or decoder.get("prompt_embed_dim", 256) != 256:
        # TinyViT's last patch merging keeps the 64 x 64 resolution only for width 320, and
        # its neck writes 256 channels.
        raise BackboneError(
            f"backbone={name}: TinyViT needs a last stage of width 320 (got "
            f"{encoder_embed_dim[-1]}) and prompt_embed_dim 256."
        )
    if not is_random(checkpoint):
        check_checkpoint_path(checkpoint, name)
    tiny_vit = tiny_vit_class()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=tiny_vit(
                img_size=image_size,
                in_chans=3,
                num_classes=1000,
                embed_dims=list(encoder_embed_dim),
                depths=list(encoder_depth),
                num_heads=list(encoder_num_heads),
                window_sizes=list(window_size),
                mlp_ratio=4.0,
                drop_rate=0.0,
                drop_path_rate=0.0,
                use_checkpoint=False,
                mbconv_expand_ratio=4.0,
                local_conv_size=3,
                layer_lr_decay=0.8,
            ),
            **prompt_and_mask_decoder(image_size=image_size, grid=GRID, **decoder),
            pixel_mean=list(PIXEL_MEAN),
            pixel_std=list(PIXEL_STD),
        )
    return finish(sam, name, checkpoint, device)
