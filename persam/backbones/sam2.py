"""SAM 2 (Ravi et al. 2024) image model behind `segment_anything`'s predictor (`backbone=sam2_<size>`).

Built from the YAML model configs the `sam2` package ships (extra `persam[sam2]`), loaded with
OmegaConf and instantiated inside the project's Hydra app: the package's own global Hydra
initialisation (run when `sam2` is imported) is undone when it was not there before.

`Sam2` subclasses the package's `SAM2Base` and adds what the project reads from a `Sam` (pixel
statistics, `preprocess`, `postprocess_masks`, `mask_decoder`, ...); `Sam2Predictor` is a
`segment_anything.SamPredictor` whose image state is filled and whose masks are predicted by the
package's own `SAM2ImagePredictor` (high-resolution features, object-score token, a box as two
corner points). Geometry: SAM 2 resizes the image to a 1024 x 1024 square (ImageNet statistics,
no padding), so `input_size` is (1024, 1024) and `postprocess_masks` only resizes to the original
size: the location prior's similarity map goes through it like a mask, so its arg-max and arg-min
land on the right image pixels. Guided attention: `GuidedSam2Attention` (a subclass of SAM 2's
`Attention`); the semantic prompt: `persam.model.semantic_prompt` (SAM 2's transformer keeps SAM's
argument names).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor

from persam.backbones.sam import (
    PIXEL_MEAN,
    PIXEL_STD,
    BackboneError,
    InputSizeError,
    check_checkpoint_path,
    finish,
    is_random,
    require,
)
from persam.model.guided_attention import guided_class

EXTRA = "sam2"
IMAGE_SIZE = 1024


def import_sam2(module: str, name: str = "sam2_<size>"):
    """Import a `sam2` module without leaving the package's global Hydra initialised."""
    from hydra.core.global_hydra import GlobalHydra

    was_initialised = GlobalHydra.instance().is_initialized()
    mod = require(module, EXTRA, name)
    if not was_initialised and GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    return mod


class SquareResize:
    """SAM 2's geometry for `SamPredictor`: the image is stretched to `size` x `size`."""

    def __init__(self, size: int) -> None:
        self.target_length = size

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) -> float32 (size, size, C), bilinear (antialiased) as SAM 2's transform."""
        x = torch.as_tensor(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        size = (self.target_length, self.target_length)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return x[0].permute(1, 2, 0).numpy()

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        h, w = original_size
        coords = np.array(coords, dtype=float)
        coords[..., 0] = coords[..., 0] * (self.target_length / w)
        coords[..., 1] = coords[..., 1] * (self.target_length / h)
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)


_CLASSES: dict[str, type] = {}


def sam2_class():
    base = import_sam2("sam2.modeling.sam2_base").SAM2Base
    if "Sam2" in _CLASSES:
        return _CLASSES["Sam2"]

    class Sam2(base):
        """SAM2Base with the attributes `persam` reads from a `segment_anything` `Sam`."""

        image_format = "RGB"
        mask_threshold = 0.0
        # Part of the embedding cache key: SAM 2 stretches the image to a square.
        preprocess_tag = "square-resize"

        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), False)
            self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), False)
            self.image_encoder.img_size = self.image_size
            decoder = self.sam_mask_decoder
            decoder.guided_attention_class = guided_sam2_attention_class()

        def embedding_state(self) -> dict:
            """What the cached image embedding depends on: the image encoder and the
            no-memory embedding added to its last level."""
            return {
                **self.image_encoder.state_dict(prefix="image_encoder."),
                "no_mem_embed": self.no_mem_embed,
            }

        @property
        def mask_decoder(self):
            return self.sam_mask_decoder

        @property
        def predictor_class(self):
            return Sam2Predictor

        def preprocess(self, x: torch.Tensor) -> torch.Tensor:
            """Normalise (B, 3, S, S), already square: no padding in SAM 2."""
            return (x - self.pixel_mean) / self.pixel_std

        def postprocess_masks(self, masks, input_size, original_size) -> torch.Tensor:
            """Low-res (B, M, h, w) -> (B, M, H, W): a plain resize (the input was a square)."""
            return F.interpolate(masks.float(), original_size, mode="bilinear", align_corners=False)

    _CLASSES["Sam2"] = Sam2
    return Sam2


def guided_sam2_attention_class() -> type:
    """SAM 2's `Attention` with PerSAM's target-guided weights when `guidance` is set (its
    interface is `segment_anything`'s, so the same head adapter serves)."""
    return guided_class(import_sam2("sam2.modeling.sam.transformer").Attention)


class Sam2Predictor(SamPredictor):
    """`SamPredictor` over SAM 2: `set_image` and `predict_torch` run the package's
    `SAM2ImagePredictor`; `features` is its image embedding, `high_res_feats` its two
    high-resolution levels (cached with it by `persam.model.encoder.Encoder`)."""

    cached_state = ("high_res_feats",)

    def __init__(self, sam) -> None:
        super().__init__(sam)
        self.transform = SquareResize(sam.image_size)
        predictor = import_sam2("sam2.sam2_image_predictor").SAM2ImagePredictor
        self.own = predictor(sam)
        self.high_res_feats = None

    @torch.no_grad()
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        self.reset_image()
        self.own.set_image(np.ascontiguousarray(image))
        self.features = self.own._features["image_embed"]
        self.high_res_feats = list(self.own._features["high_res_feats"])
        self.original_size = tuple(image.shape[:2])
        self.input_size = (self.model.image_size, self.model.image_size)
        self.is_image_set = True

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords,
        point_labels,
        boxes=None,
        mask_input=None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ):
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        own = self.own
        own._features = {"image_embed": self.features, "high_res_feats": self.high_res_feats}
        own._orig_hw = [tuple(self.original_size)]
        own._is_image_set = True
        return own._predict(
            point_coords, point_labels, boxes, mask_input, multimask_output, return_logits
        )


# size -> (the package's model config, the official checkpoint's file name)
SIZES = {
    "hiera_t": ("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt"),
    "hiera_s": ("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt"),
    "hiera_b_plus": ("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt"),
    "hiera_l": ("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"),
}


def build_sam2(
    name: str = "sam2_hiera_t",
    checkpoint: str | None = None,
    seed: int = 0,
    device: str = "auto",
    model_config: str = "configs/sam2.1/sam2.1_hiera_t.yaml",
    image_size: int = IMAGE_SIZE,
    **base_fields,
):
    """A frozen SAM 2 image model from the package's `model_config` (a path inside the `sam2`
    package, or a file); `checkpoint` holds `{"model": state_dict}` or a state dict.

    The base config's SAM fields describe SAM's ViT and decoder; SAM 2's come from
    `model_config`, so those fields are not read (the ViT ones must stay null).
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    vit = [
        k for k, v in base_fields.items() if k.startswith(("encoder_", "window")) and v is not None
    ]
    if vit:
        raise BackboneError(
            f"backbone={name} is not a ViT: {vit} do not apply (leave them null; the architecture "
            f"is backbone.model_config)."
        )
    package = Path(import_sam2("sam2", name).__file__).parent
    path = Path(model_config) if Path(model_config).is_file() else package / model_config
    if not path.is_file():
        raise BackboneError(
            f"backbone.model_config={model_config}: no such SAM 2 model config (in the sam2 "
            f"package: {', '.join(c for c, _ in SIZES.values())})."
        )
    cfg = OmegaConf.load(path).model
    if image_size != cfg.image_size:
        raise InputSizeError(
            f"backbone.image_size={image_size}: SAM 2 ({path.name}) takes {cfg.image_size} px "
            f"input; set backbone.image_size={cfg.image_size}."
        )
    if not is_random(checkpoint):
        check_checkpoint_path(checkpoint, name)
    parts = OmegaConf.to_container(cfg)
    parts.pop("_target_")  # SAM2Base: built as this module's subclass
    sam2 = sam2_class()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = sam2(**instantiate(parts, _convert_="all"))
    return finish(model, name, checkpoint, device)
