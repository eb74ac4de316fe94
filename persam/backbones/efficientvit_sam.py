"""EfficientViT-SAM (Zhang et al. 2024): an EfficientViT image encoder with SAM's decoder.

Only the image encoder comes from the `efficientsam` package (extra `persam[efficientvit_sam]`),
built by its architecture functions (`efficientvit_sam_l0`, ...); its pretrained builder
(`create_efficientvit_sam_model`) and its download helper are never called: weights come from a
checkpoint file the user passes. The prompt encoder, mask decoder and `Sam` are
`segment_anything`'s (the package's checkpoints use the same parameter names), so the project's
hooks apply unchanged.

Geometry: prompts, masks and the 64 x 64 grid live in SAM's 1024 px frame, as in SAM; only the
encoder's input differs: the image resized to `encoder_input_size` (512 for l0/l1/l2, 1024 for
xl0/xl1) on its longest side, normalised and zero-padded to a square, as the package's own
predictor does (`EfficientViTSamPredictor` here).
"""

from __future__ import annotations

import numpy as np
import torch
from segment_anything import SamPredictor
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

EXTRA = "efficientvit-sam"
IMAGE_SIZE = 1024  # SAM's prompt and mask frame
GRID = 64
# variant -> the encoder input size its weights were trained at
VARIANTS = {"l0": 512, "l1": 512, "l2": 512, "xl0": 1024, "xl1": 1024}
# The package's layer-norm eps for every variant (its model zoo sets it after building).
NORM_EPS = 1e-6


class EfficientViTSamModel(Sam):
    """A `Sam` whose image encoder reads the image at `encoder_input_size` (see the module)."""

    def __init__(self, image_encoder, encoder_input_size: int, **decoder) -> None:
        super().__init__(
            image_encoder=image_encoder,
            **decoder,
            pixel_mean=list(PIXEL_MEAN),
            pixel_std=list(PIXEL_STD),
        )
        self.encoder_input_size = encoder_input_size
        sam = require("efficientsam.models.efficientvit.sam", EXTRA, "efficientvit_sam_<size>")
        # The package's resize (longest side, PIL bilinear) and corner padding.
        self.resize = sam.SamResize(encoder_input_size)
        self.pad = sam.SamPad(encoder_input_size)

    def encoder_input(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 (H, W, 3) -> normalised, padded (1, 3, S, S), S = encoder_input_size."""
        x = torch.as_tensor(self.resize(image), device=self.pixel_mean.device)
        x = x.permute(2, 0, 1).float()
        x = (x - self.pixel_mean) / self.pixel_std
        return self.pad(x)[None]


class EfficientViTSamPredictor(SamPredictor):
    """`SamPredictor` whose `set_image` feeds the encoder the package's input; prompts, masks,
    `input_size` (1024-frame) and everything else are `segment_anything`'s."""

    @torch.no_grad()
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        self.reset_image()
        self.original_size = image.shape[:2]
        self.input_size = tuple(
            self.transform.get_preprocess_shape(*self.original_size, self.transform.target_length)
        )
        self.features = self.model.image_encoder(self.model.encoder_input(image))
        self.is_image_set = True


EfficientViTSamModel.predictor_class = EfficientViTSamPredictor


def build_efficientvit_sam(
    name: str = "efficientvit_sam_l0",
    checkpoint: str | None = None,
    seed: int = 0,
    device: str = "auto",
    variant: str = "l0",
    encoder_input_size: int = 512,
    image_size: int = IMAGE_SIZE,
    vit_patch_size: int = IMAGE_SIZE // GRID,
    encoder_embed_dim=None,
    encoder_depth=None,
    encoder_num_heads=None,
    encoder_global_attn_indexes=None,
    window_size=None,
    **decoder,
) -> EfficientViTSamModel:
    """A frozen EfficientViT-SAM of `variant` (l0, l1, l2, xl0, xl1).

    The base config's ViT fields (encoder_embed_dim, ...) do not apply and must stay null;
    `decoder`: the fields of `persam.backbones.sam.prompt_and_mask_decoder`.
    """
    if variant not in VARIANTS:
        raise BackboneError(
            f"backbone.variant={variant}: EfficientViT-SAM comes in {', '.join(VARIANTS)} "
            f"(backbone=efficientvit_sam_<variant>)."
        )
    if encoder_input_size != VARIANTS[variant]:
        raise InputSizeError(
            f"backbone.encoder_input_size={encoder_input_size}: EfficientViT-SAM {variant} takes "
            f"{VARIANTS[variant]} px input (l0/l1/l2: 512, xl0/xl1: 1024). Set "
            f"backbone.encoder_input_size={VARIANTS[variant]}."
        )
    if image_size != IMAGE_SIZE or vit_patch_size != IMAGE_SIZE // GRID:
        raise InputSizeError(
            f"backbone.image_size={image_size}, vit_patch_size={vit_patch_size}: EfficientViT-SAM's "
            f"prompts and masks live in SAM's {IMAGE_SIZE} px frame on a {GRID} x {GRID} grid; "
            f"set backbone.image_size={IMAGE_SIZE} and vit_patch_size={IMAGE_SIZE // GRID} (the "
            f"encoder's own input is backbone.encoder_input_size)."
        )
    vit = dict(
        encoder_embed_dim=encoder_embed_dim,
        encoder_depth=encoder_depth,
        encoder_num_heads=encoder_num_heads,
        encoder_global_attn_indexes=encoder_global_attn_indexes,
        window_size=window_size,
    )
    if any(v is not None for v in vit.values()):
        set_ = {k: v for k, v in vit.items() if v is not None}
        raise BackboneError(
            f"backbone={name} is not a ViT: {set_} do not apply (leave them null; the "
            f"architecture is backbone.variant)."
        )
    if decoder.get("prompt_embed_dim", 256) != 256:
        raise BackboneError(f"backbone={name}: EfficientViT-SAM's neck writes 256 channels.")
    sam_module = require("efficientsam.models.efficientvit.sam", EXTRA, name)
    norm = require("efficientsam.models.nn.norm", EXTRA, name)
    if not is_random(checkpoint):
        check_checkpoint_path(checkpoint, name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # The architecture function only (no weights); its own prompt encoder and decoder
        # (a vendored copy of segment_anything's) are dropped for segment_anything's.
        package_model = getattr(sam_module, f"efficientvit_sam_{variant}")(
            image_size=encoder_input_size
        )
        encoder = package_model.image_encoder
        encoder.img_size = image_size  # SAM's frame, read by Sam.preprocess and SamPredictor
        sam = EfficientViTSamModel(
            encoder,
            encoder_input_size,
            **prompt_and_mask_decoder(image_size=image_size, grid=GRID, **decoder),
        )
    norm.set_norm_eps(sam, NORM_EPS)  # as the package's model zoo does, decoder included
    return finish(sam, name, checkpoint, device)
