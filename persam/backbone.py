"""SAM backbones: a registry of architectures built from `segment_anything`'s own modules.

An architecture is data (the fields of a `conf/backbone/*.yaml` file); `build_sam` turns it into
a `segment_anything.modeling.Sam`, loads a checkpoint when one is given (random init from `seed`
otherwise), freezes it and moves it to the chosen device.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

log = logging.getLogger(__name__)

OFFICIAL_CHECKPOINTS = {
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
}

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the chosen architecture."""


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU; anything else is passed to `torch.device`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_architecture(
    encoder_embed_dim: int = 1280,
    encoder_depth: int = 32,
    encoder_num_heads: int = 16,
    encoder_global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31),
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
    mlp_ratio: float = 4.0,
) -> Sam:
    """An untrained `Sam` with the given architecture (the defaults are ViT-H's)."""
    grid = image_size // vit_patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=encoder_depth,
            embed_dim=encoder_embed_dim,
            img_size=image_size,
            mlp_ratio=mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=encoder_num_heads,
            patch_size=vit_patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(encoder_global_attn_indexes),
            window_size=window_size,
            out_chans=prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=decoder_depth,
                embedding_dim=prompt_embed_dim,
                mlp_dim=decoder_mlp_dim,
                num_heads=decoder_num_heads,
            ),
            transformer_dim=prompt_embed_dim,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


def _hint(name: str) -> str:
    if name in OFFICIAL_CHECKPOINTS:
        return (
            f" Download the official {name} weights from {OFFICIAL_CHECKPOINTS[name]} and pass "
            f"backbone.checkpoint=/path/to/{OFFICIAL_CHECKPOINTS[name].rsplit('/', 1)[1]}"
            f" (or put it in the folder named by $SAM_CHECKPOINT_DIR)."
        )
    return " Pass backbone.checkpoint=/path/to/a/SAM-layout.pth, or backbone.checkpoint=null for random weights."


def check_checkpoint_path(checkpoint: str | Path, name: str = "") -> Path:
    """The checkpoint's path, or a `CheckpointError` saying where to get it."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise CheckpointError(f"SAM checkpoint not found: {path}.{_hint(name)}")
    return path


def load_checkpoint(sam: Sam, checkpoint: str | Path, name: str = "") -> None:
    """Load a SAM-layout state dict into `sam`, with errors that say what to do."""
    path = check_checkpoint_path(checkpoint, name)
    hint = _hint(name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise CheckpointError(
            f"Cannot read SAM checkpoint {path}: {type(exc).__name__}: {exc}. The file is corrupt "
            f"or not a PyTorch state dict; download it again.{hint}"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(
            f"SAM checkpoint {path} holds a {type(state).__name__}, not a state dict."
        )
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        detail = "; ".join(line.strip() for line in lines[1:4]) or lines[0]
        raise CheckpointError(
            f"SAM checkpoint {path} does not fit backbone '{name}': {detail} ... Choose the matching "
            f"backbone (backbone=vit_b|vit_l|vit_h|tiny|embedded) or set the backbone.* architecture "
            f"fields to the checkpoint's architecture."
        ) from exc


def build_sam(
    name: str = "vit_h",
    checkpoint: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    **architecture,
) -> Sam:
    """Build a frozen `Sam` in eval mode: from `checkpoint`, or random-init from `seed`."""
    if checkpoint is not None:
        check_checkpoint_path(checkpoint, name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_architecture(**architecture)
    if checkpoint is not None:
        load_checkpoint(sam, checkpoint, name)
    else:
        log.warning(
            "Backbone '%s' has random weights (no checkpoint): masks and metrics are meaningless "
            "as segmentations; they only exercise the method's arithmetic.",
            name,
        )
    sam.eval()
    for p in sam.parameters():
        p.requires_grad_(False)
    return sam.to(resolve_device(device))
