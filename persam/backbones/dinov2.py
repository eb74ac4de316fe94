"""DINOv2 image features (Oquab et al. 2023) for methods that match references by semantics
(GF-SAM): the patch tokens after the last block, before the final LayerNorm (`x_prenorm`
without the CLS token, as GF-SAM reads them).

The network is timm's `VisionTransformer` (`pip install 'persam[dinov2]'`); Meta's official
checkpoints (`dinov2_vit{s,b,l,g}14_pretrain.pth`, the `DinoVisionTransformer` key layout) load
through timm's own key mapping (`checkpoint_filter_fn`). Names:

    dinov2_vits14 | dinov2_vitb14 | dinov2_vitl14 | dinov2_vitg14   Meta's four sizes
    checkpoint=PATH      any DINOv2 in the official layout: the architecture is read from its
                         tensor shapes and from `<stem>.json` beside it (its "architecture" or
                         "kwargs"; the number of heads cannot be read from shapes)
    checkpoint=random    random weights from `seed` (tests and timing only)

An image (H, W, 3) RGB uint8 is read as GF-SAM reads it: k/255 as float32, resized to
`input_size` x `input_size` by bilinear interpolation with antialias (torchvision's `Resize` on
a tensor), normalised by ImageNet's mean and std.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from persam.backbones.sam import (
    CheckpointError,
    MissingDependencyError,
    is_random,
    read_checkpoint,
    resolve_device,
)
from persam.model.cache import EmbeddingCache, module_fingerprint

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

URL = "https://dl.fbaipublicfiles.com/dinov2/{name}/{name}_pretrain.pth"

# Meta's DinoVisionTransformer sizes (dinov2/hub/backbones.py): vitg14 uses a SwiGLU MLP.
ARCHITECTURES = {
    "dinov2_vits14": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "dinov2_vitb14": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "dinov2_vitl14": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "dinov2_vitg14": dict(embed_dim=1536, depth=40, num_heads=24, mlp_ratio=4.0, ffn="swiglu"),
}
# Every size: img_size 518 (a 37 x 37 grid), patch 14, layer scale init 1e-5, all biases on.
COMMON = dict(img_size=518, patch_size=14, init_values=1e-5, ffn="mlp")


def official_file(name: str) -> str:
    return f"{name}_pretrain.pth"


def _timm():
    try:
        import timm.layers  # noqa: F401
        from timm.models import vision_transformer
    except ImportError as exc:
        raise MissingDependencyError(
            f"DINOv2 features need the optional package 'timm' ({exc}); install it with: "
            f"pip install 'persam[dinov2]'"
        ) from exc
    return vision_transformer


def _hint(name: str) -> str:
    random = " (features.checkpoint=random builds random weights, for tests and timing only)"
    if name in ARCHITECTURES:
        return (
            f" Download the official {name} weights from {URL.format(name=name)} and pass "
            f"features.checkpoint=/path/to/{official_file(name)} (or put it in the folder named "
            f"by $SAM_CHECKPOINT_DIR){random}."
        )
    return f" Pass features.checkpoint=/path/to/a/DINOv2-layout.pth{random}."


def _unwrap(state: dict) -> dict:
    """The backbone's state dict inside a DINOv2 training checkpoint ("teacher", "backbone.")."""
    if isinstance(state.get("teacher"), dict):
        state = state["teacher"]
    out = {}
    for k, v in state.items():
        k = re.sub(r"^(module\.)?(backbone\.)?", "", k)
        # block_chunks > 0 saves blocks.<chunk>.<index>.: the index is global
        k = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k)
        out[k] = v
    return out


def checkpoint_architecture(state: dict, record: dict | None, name: str, path) -> dict:
    """The DinoVisionTransformer architecture of an official-layout state dict: sizes from the
    tensor shapes, the number of heads from the record beside it (or Meta's for that width)."""
    try:
        embed_dim = int(state["cls_token"].shape[-1])
        patch_size = int(state["patch_embed.proj.weight"].shape[-1])
        tokens = int(state["pos_embed"].shape[1]) - 1
    except KeyError as exc:
        raise CheckpointError(
            f"DINOv2 checkpoint {path} has no {exc} tensor: it is not a DinoVisionTransformer "
            f"state dict.{_hint(name)}"
        ) from exc
    grid = int(round(tokens**0.5))
    if grid * grid != tokens:
        raise CheckpointError(
            f"DINOv2 checkpoint {path}: pos_embed of {tokens} + 1 tokens is not a square grid."
        )
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    if "blocks.0.mlp.w12.weight" in state:
        ffn, hidden = "swiglu", int(state["blocks.0.mlp.w12.weight"].shape[0]) // 2
        # Meta's SwiGLU: hidden = 8-aligned int(mlp_ratio * dim * 2 / 3)
        mlp_ratio = hidden * 3 / 2 / embed_dim
    else:
        ffn, hidden = "mlp", int(state["blocks.0.mlp.fc1.weight"].shape[0])
        mlp_ratio = hidden / embed_dim
    known = {a["embed_dim"]: a["num_heads"] for a in ARCHITECTURES.values()}
    recorded = dict((record or {}).get("architecture") or (record or {}).get("kwargs") or {})
    num_heads = int(recorded.get("num_heads", known.get(embed_dim, 0)))
    if not num_heads:
        raise CheckpointError(
            f"DINOv2 checkpoint {path}: the number of attention heads of a width-{embed_dim} ViT "
            f"cannot be read from its shapes. Write it beside it, in "
            f'{Path(path).with_suffix(".json")}: {{"architecture": {{"num_heads": N}}}}.'
        )
    return dict(
        img_size=grid * patch_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        ffn=ffn,
        hidden=hidden,
        init_values=float(recorded.get("init_values", COMMON["init_values"])),
    )


def build_vit(
    img_size: int,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float = 4.0,
    ffn: str = "mlp",
    init_values: float = 1e-5,
    hidden: int | None = None,
) -> torch.nn.Module:
    """timm's VisionTransformer laid out as Meta's DinoVisionTransformer (CLS token whose
    position embedding is part of `pos_embed`, layer scale, LayerNorm eps 1e-6, no head)."""
    vit = _timm()
    from timm.layers import SwiGLUPacked

    kwargs = {}
    if ffn == "swiglu":
        if hidden is None:  # Meta's SwiGLUFFNFused: 2/3 of the MLP width, a multiple of 8
            hidden = (int(embed_dim * mlp_ratio * 2 / 3) + 7) // 8 * 8
        kwargs = dict(mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU)
        mlp_ratio = 2 * hidden / embed_dim  # timm's packed layer: fc1 outputs both halves
    elif hidden is not None:
        mlp_ratio = hidden / embed_dim
    model = vit.VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=True,
        init_values=init_values,
        num_classes=0,
        **kwargs,
    )
    # Meta's attention arithmetic (q * scale, q @ k^T, softmax, @ v), not the fused kernel:
    # the same values as DinoVisionTransformer without xFormers.
    for block in model.blocks:
        block.attn.fused_attn = False
    return model


def _record(path: Path) -> dict | None:
    beside = path.with_suffix(".json")
    if not beside.is_file():
        return None
    try:
        record = json.loads(beside.read_text())
    except (OSError, ValueError) as exc:
        log.warning("Ignoring the unreadable record %s beside %s: %s", beside, path, exc)
        return None
    return record if isinstance(record, dict) else None


@dataclass
class Tokens:
    """An image's patch tokens: (h*w, C) float32, token k at grid cell (k // w, k % w)."""

    tokens: torch.Tensor
    grid: tuple[int, int]


class DINOv2Features:
    """DINOv2 `x_prenorm` patch tokens of RGB uint8 images, through the embedding cache.

    Args:
      model: a timm VisionTransformer laid out as DINOv2 (`build_dinov2`).
      name: its name (for messages and the cache key).
      input_size: the square size images are resized to (518: a 37 x 37 grid).
      cache: an `EmbeddingCache` (tokens computed once per weights, image and preprocessing).
    """

    kind = "dinov2"

    def __init__(
        self,
        model: torch.nn.Module,
        name: str = "dinov2",
        input_size: int = 518,
        cache: EmbeddingCache | None = None,
    ) -> None:
        patch = model.patch_embed.patch_size[0]
        if input_size % patch:
            raise ValueError(
                f"features.input_size={input_size} is not a multiple of the patch size {patch}"
            )
        if input_size != model.patch_embed.img_size[0]:
            raise ValueError(
                f"features.input_size={input_size}: this DINOv2 takes {model.patch_embed.img_size[0]} "
                "(its position embedding's grid)"
            )
        self.model = model
        self.name = name
        self.input_size = int(input_size)
        self.grid = (input_size // patch, input_size // patch)
        self.cache = cache
        self._fingerprint: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = module_fingerprint(self.model)
        return self._fingerprint

    def preprocess_id(self) -> str:
        return f"dinov2|size={self.input_size}|bilinear-antialias|mean={IMAGENET_MEAN}|std={IMAGENET_STD}"

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, S, S) normalised float32 (torchvision's ToTensor, Resize
        on a tensor, Normalize)."""
        x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div(255)
        x = F.interpolate(
            x[None],
            (self.input_size, self.input_size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        mean = torch.as_tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.as_tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
        return x.sub(mean).div(std)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Tokens:
        key = None
        if self.cache is not None and self.cache.enabled:
            key = self.cache.key(self.fingerprint, image, self.preprocess_id())
            entry = self.cache.load(key)
            if entry is not None:
                return Tokens(entry["tokens"], tuple(entry["grid"]))
        x = self.preprocess(image).to(self.device)
        (prenorm,) = self.model.forward_intermediates(
            x, indices=1, norm=False, output_fmt="NLC", intermediates_only=True
        )
        out = Tokens(prenorm[0].float().cpu(), self.grid)
        if key is not None:
            self.cache.store(key, {"tokens": out.tokens, "grid": list(out.grid)})
        return out


def build_dinov2(
    name: str = "dinov2_vitl14",
    checkpoint: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
) -> torch.nn.Module:
    """A frozen DINOv2 ViT (timm) in eval mode: `name`'s architecture from Meta's official
    checkpoint, any official-layout checkpoint (architecture from its shapes and record), or
    random weights from `seed` (`checkpoint=random`, `name` one of Meta's sizes)."""
    vit = _timm()
    if is_random(checkpoint):
        if name not in ARCHITECTURES:
            raise CheckpointError(
                f"features.name={name}: random weights need one of {', '.join(ARCHITECTURES)} "
                "(or pass a checkpoint, whose architecture is read from it)."
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_vit(**COMMON, **ARCHITECTURES[name])
        log.warning(
            "DINOv2 '%s' has RANDOM weights (features.checkpoint=random): the features only "
            "exercise the method.",
            name,
        )
    else:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise CheckpointError(f"DINOv2 checkpoint not found: {path}.{_hint(name)}")
        state = _unwrap(read_checkpoint(path, name))
        arch = checkpoint_architecture(state, _record(path), name, path)
        expected = ARCHITECTURES.get(name)
        if expected and any(
            arch[k] != v for k, v in expected.items() if k in ("embed_dim", "depth")
        ):
            log.warning(
                "DINOv2 checkpoint %s is not %s's size (width %d, depth %d): built the checkpoint's "
                "own architecture.",
                path,
                name,
                arch["embed_dim"],
                arch["depth"],
            )
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = build_vit(**arch)
        model = model.to_empty(device="cpu")
        try:
            model.load_state_dict(vit.checkpoint_filter_fn(dict(state), model), strict=True)
        except RuntimeError as exc:
            lines = str(exc).splitlines()
            detail = "; ".join(line.strip() for line in lines[1:4]) or lines[0]
            raise CheckpointError(
                f"DINOv2 checkpoint {path} does not fit the architecture read from it: {detail}."
                f"{_hint(name)}"
            ) from exc
        model.architecture = arch
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(resolve_device(device))


def dinov2_features(
    name: str = "dinov2_vitl14",
    checkpoint: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    input_size: int | None = None,
    cache: EmbeddingCache | None = None,
) -> DINOv2Features:
    """`conf/features/dinov2.yaml`'s target: the model and its preprocessing."""
    model = build_dinov2(name, checkpoint, seed, device)
    size = int(input_size or model.patch_embed.img_size[0])
    return DINOv2Features(model, name=name, input_size=size, cache=cache)
