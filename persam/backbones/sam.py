"""SAM backbones: a registry of architectures built from `segment_anything`'s own modules.

An architecture is data (the fields of a `conf/backbone/*.yaml` file); `build_sam` turns it into
a `segment_anything.modeling.Sam`, loads a checkpoint when one is given (random init from `seed`
when `checkpoint` is `random` or null), freezes it and moves it to the chosen device. Other
families (persam/backbones/mobile_sam.py, ...) build their encoder and share `prompt_and_mask_decoder`
and `finish` from here.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Mapping
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

from persam.backbones.architecture import (
    FIELDS,
    ArchitectureError,
    checkpoint_architecture,
    normalise,
    parameter_shapes,
    record_architecture,
)
from persam.data.files import sha256_file

log = logging.getLogger(__name__)

OFFICIAL_CHECKPOINTS = {
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "mobile_sam": "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
    # Hugging Face's SamModel reads segment_anything's checkpoints (config: vit_b's sizes).
    "hf_sam": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    **{
        f"sam2_{size}": f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_{file}.pt"
        for size, file in (
            ("hiera_t", "hiera_tiny"),
            ("hiera_s", "hiera_small"),
            ("hiera_b_plus", "hiera_base_plus"),
            ("hiera_l", "hiera_large"),
        )
    },
    **{
        f"efficientvit_sam_{v}": "https://huggingface.co/mit-han-lab/efficientvit-sam/resolve/"
        f"main/efficientvit_sam_{v}.pt"
        for v in ("l0", "l1", "l2", "xl0", "xl1")
    },
}

# `backbone.checkpoint=random`: random weights from `seed` (timing and tests only).
RANDOM = "random"

# Parameter-name prefixes that tell which family a state dict was saved from.
_SAM_VIT_KEY = "image_encoder.blocks.0."
_FAMILY_KEYS = {
    _SAM_VIT_KEY: "SAM ViT (backbone=vit_b|vit_l|vit_h|tiny|embedded)",
    "image_encoder.layers.0.": "MobileSAM's TinyViT (backbone=mobile_sam)",
    "image_encoder.backbone.": "EfficientViT-SAM (backbone=efficientvit_sam_<size>)",
    "image_encoder.trunk.": "SAM 2's Hiera (backbone=sam2_<size>)",
    "vision_encoder.": "Hugging Face SamModel (backbone=hf_sam)",
}

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class BackboneError(RuntimeError):
    """A backbone cannot be built as configured; the message says what to change."""


class CheckpointError(BackboneError):
    """A checkpoint is missing, unreadable or does not fit the chosen architecture."""


class MissingDependencyError(BackboneError):
    """The backbone's optional dependency group (`pip install 'persam[<extra>]'`) is missing."""


class InputSizeError(BackboneError):
    """`backbone.image_size` is not an input size the backbone supports."""


def is_random(checkpoint) -> bool:
    """`backbone.checkpoint` asks for random weights (`random`, or null as before)."""
    return checkpoint is None or str(checkpoint) == RANDOM


def require(module: str, extra: str, backbone: str):
    """Import an optional dependency, or a `MissingDependencyError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"backbone={backbone} needs the optional dependency '{module}' ({exc}). Install it "
            f"with: pip install 'persam[{extra}]'"
        ) from exc


def checkpoint_family(state: dict) -> str | None:
    """Which backbone family a state dict comes from, by its parameter names, or None."""
    for prefix, family in _FAMILY_KEYS.items():
        if any(str(k).startswith(prefix) for k in state):
            return family
    return None


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
        **prompt_and_mask_decoder(
            image_size=image_size,
            grid=image_size // vit_patch_size,
            prompt_embed_dim=prompt_embed_dim,
            mask_in_chans=mask_in_chans,
            decoder_depth=decoder_depth,
            decoder_mlp_dim=decoder_mlp_dim,
            decoder_num_heads=decoder_num_heads,
            num_multimask_outputs=num_multimask_outputs,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


def prompt_and_mask_decoder(
    image_size: int,
    grid: int,
    prompt_embed_dim: int = 256,
    mask_in_chans: int = 16,
    decoder_depth: int = 2,
    decoder_mlp_dim: int = 2048,
    decoder_num_heads: int = 8,
    num_multimask_outputs: int = 3,
    iou_head_depth: int = 3,
    iou_head_hidden_dim: int = 256,
) -> dict:
    """SAM's prompt encoder and mask decoder for a `grid` x `grid` embedding of `image_size`
    input: the keyword arguments `prompt_encoder` and `mask_decoder` of `Sam`."""
    return dict(
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
    )


def _hint(name: str) -> str:
    random = " (backbone.checkpoint=random builds random weights, for timing and tests only)"
    if name in OFFICIAL_CHECKPOINTS:
        return (
            f" Download the official {name} weights from {OFFICIAL_CHECKPOINTS[name]} and pass "
            f"backbone.checkpoint=/path/to/{OFFICIAL_CHECKPOINTS[name].rsplit('/', 1)[1]}"
            f" (or put it in the folder named by $SAM_CHECKPOINT_DIR){random}."
        )
    return f" Pass backbone.checkpoint=/path/to/a/SAM-layout.pth{random}."


def check_checkpoint_path(checkpoint: str | Path, name: str = "") -> Path:
    """The checkpoint's path, or a `CheckpointError` saying where to get it."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise CheckpointError(f"SAM checkpoint not found: {path}.{_hint(name)}")
    return path


def read_checkpoint(checkpoint: str | Path, name: str = "") -> dict:
    """The state dict in a checkpoint file (unwrapped from Lightning's `state_dict` or SAM 2's
    `model`), or a `CheckpointError` saying what to do."""
    path = check_checkpoint_path(checkpoint, name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise CheckpointError(
            f"Cannot read SAM checkpoint {path}: {type(exc).__name__}: {exc}. The file is corrupt "
            f"or not a PyTorch state dict; download it again.{_hint(name)}"
        ) from exc
    for wrapper in ("state_dict", "model"):  # Lightning-style / SAM 2's {"model": ...}
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise CheckpointError(
            f"SAM checkpoint {path} holds a {type(state).__name__}, not a state dict."
        )
    return state


def load_checkpoint(
    sam: torch.nn.Module,
    checkpoint: str | Path,
    name: str = "",
    rename: Callable[[dict], dict] | None = None,
    accepts: tuple[str, ...] = (),
    state: dict | None = None,
) -> None:
    """Load a state dict into `sam`, with errors that say what to do.

    `rename` maps the file's parameter names to `sam`'s (a backbone that reads another layout);
    `accepts`: the checkpoint families (`checkpoint_family`) it reads besides its own; `state`:
    the file's state dict when already read (`read_checkpoint`).
    """
    path = check_checkpoint_path(checkpoint, name)
    hint = _hint(name)
    if state is None:
        state = read_checkpoint(path, name)
    family = checkpoint_family(state)
    mine = checkpoint_family(sam.state_dict())
    try:
        sam.load_state_dict(rename(state) if rename else state, strict=True)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        detail = "; ".join(line.strip() for line in lines[1:4]) or lines[0]
        if family is not None and family != mine and family not in accepts:
            raise CheckpointError(
                f"SAM checkpoint {path} is a {family} checkpoint, not one of backbone '{name}' "
                f"({mine}). Choose the matching backbone, or pass backbone '{name}''s own "
                f"checkpoint.{hint}"
            ) from exc
        raise CheckpointError(
            f"SAM checkpoint {path} does not fit backbone '{name}': {detail} ... Choose the matching "
            f"backbone (backbone=vit_b|vit_l|vit_h|tiny|embedded|mobile_sam|hf_sam|efficientvit_sam_<size>|sam2_<size>) or set the "
            f"backbone.* architecture fields to the checkpoint's architecture."
        ) from exc


def architecture_shapes(architecture: Mapping) -> dict[str, tuple[int, ...]] | None:
    """The parameter shapes of `build_architecture(**architecture)`, built on the meta device
    (no memory, no random numbers drawn), or None when it cannot be built."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            return parameter_shapes(build_architecture(**architecture).state_dict())
    except (AssertionError, ValueError, RuntimeError, TypeError):
        return None


def configured_architecture(architecture: Mapping) -> dict:
    """`architecture` (the `build_architecture` keywords given) with the defaults filled in,
    as plain values."""
    defaults = {
        p.name: p.default for p in inspect.signature(build_architecture).parameters.values()
    }
    return normalise({**defaults, **architecture})


def checkpoint_record(path: Path) -> tuple[Path, dict | None]:
    """The record beside a checkpoint (`<stem>.json`: `persam.train`'s record, or a plain
    architecture file), or None when there is none, it is unreadable, or its sha256 is
    another file's (each of the last two with a warning)."""
    beside = path.with_suffix(".json")
    if not beside.is_file():
        return beside, None
    try:
        record = json.loads(beside.read_text())
    except (OSError, ValueError) as exc:
        log.warning("Ignoring the unreadable record %s beside %s: %s", beside, path, exc)
        return beside, None
    if not isinstance(record, dict):
        return beside, None
    digest = record.get("sha256")
    if digest and digest != sha256_file(path):
        log.warning("Ignoring the record %s: its sha256 is not %s's", beside, path)
        return beside, None
    return beside, record


def _shape_differences(expected: Mapping, found: Mapping, limit: int = 3) -> str:
    lines = [f"missing {k}" for k in expected if k not in found]
    lines += [f"unexpected {k}" for k in found if k not in expected]
    lines += [
        f"{k}: {list(found[k])} in the file, {list(v)} built"
        for k, v in expected.items()
        if k in found and tuple(found[k]) != tuple(v)
    ]
    return "; ".join(lines[:limit]) + (
        f" (+{len(lines) - limit} more)" if len(lines) > limit else ""
    )


def fitting_architecture(
    state: dict, path: Path, architecture: dict, name: str
) -> tuple[dict, dict | None]:
    """The architecture to build for the checkpoint `state` read from `path`, and the record
    beside it (or None).

    `architecture` (the config) when the checkpoint's parameter shapes and its record fit it;
    else, for a SAM ViT checkpoint, the checkpoint's own (`persam.backbones.architecture`), with one
    warning naming the fields that differ. Other families are left to `load_checkpoint`."""
    beside, record = checkpoint_record(path)
    if checkpoint_family(state) != _FAMILY_KEYS[_SAM_VIT_KEY]:
        return architecture, record
    shapes = parameter_shapes(state)
    recorded = record_architecture(record)
    configured = configured_architecture(architecture)
    if architecture_shapes(architecture) == shapes and all(
        configured.get(k) == v for k, v in recorded.items()
    ):
        return architecture, record
    try:
        arch = checkpoint_architecture(shapes, recorded, configured)
    except ArchitectureError as exc:
        fix = (
            f"Correct or remove the record {beside}, which does not describe this checkpoint"
            if str(exc).startswith("its record")
            else f"Write its architecture beside it, in {beside}: "
            '{"architecture": {"decoder_num_heads": ..., ...}} with the fields of '
            "conf/backbone_base.yaml, or set the backbone.* architecture fields to the "
            "checkpoint's (backbone.decoder_num_heads=N ...)"
        )
        raise CheckpointError(
            f"SAM checkpoint {path} does not fit backbone '{name}' as configured, and its own "
            f"architecture cannot be read from it: {exc}. {fix}."
        ) from exc
    built = architecture_shapes(arch)
    if built != shapes:
        raise CheckpointError(
            f"SAM checkpoint {path} does not fit backbone '{name}', nor the SAM architecture "
            f"read from its shapes: {_shape_differences(built or {}, shapes)}. It is not a "
            f"segment_anything Sam state dict; pass one (backbone.checkpoint=...) or choose "
            f"the backbone that reads it.{_hint(name)}"
        )
    changed = ", ".join(
        f"{k} {_show(configured.get(k))} -> {_show(arch[k])}"
        for k in FIELDS
        if configured.get(k) != arch[k]
    )
    log.warning(
        "SAM checkpoint %s does not fit backbone '%s' as configured (%s): built the "
        "checkpoint's own architecture, read from its parameter shapes%s.",
        path,
        name,
        changed,
        f" and its record {beside}" if recorded else "",
    )
    return arch, record


def _show(value) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def synthetic_world_model(sam: torch.nn.Module, name: str, architecture: Mapping) -> bool:
    """Whether `sam` holds weights trained on the synthetic world alone (`persam.train`): the
    record beside its checkpoint is a training record, or it is `backbone=embedded` built with
    the configured `architecture` (a copy without a record, as the golden video model)."""
    record = getattr(sam, "checkpoint_record", None) or {}
    if str(record.get("command", "")).startswith("python -m persam.train"):
        return True
    built = getattr(sam, "architecture", None)
    return name == "embedded" and built == configured_architecture(architecture)


def build_sam(
    name: str = "vit_h",
    checkpoint: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    **architecture,
) -> Sam:
    """Build a frozen `Sam` in eval mode: from `checkpoint`, or random-init from `seed`.

    A SAM ViT checkpoint that does not fit `architecture` (its parameter shapes, or the record
    beside it) is built with its own architecture instead (`fitting_architecture`, a warning).
    The model's `architecture` attribute holds what was built, `checkpoint_record` the record
    beside its checkpoint (or None)."""
    state, record = None, None
    if not is_random(checkpoint):
        path = check_checkpoint_path(checkpoint, name)
        state = read_checkpoint(path, name)
        architecture, record = fitting_architecture(state, path, architecture, name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_architecture(**architecture)
    sam.architecture = configured_architecture(architecture)
    sam.checkpoint_record = record
    return finish(sam, name, checkpoint, device, state=state)


def finish(
    model: torch.nn.Module,
    name: str,
    checkpoint,
    device: str = "auto",
    target: torch.nn.Module | None = None,
    **loading,
):
    """Load `checkpoint` into `target` (default `model`; `loading`: `load_checkpoint`'s rename,
    accepts and state), or warn that the weights are random; freeze `model`, put it in eval mode on
    `device`. Shared by every backbone family."""
    if not is_random(checkpoint):
        load_checkpoint(model if target is None else target, checkpoint, name, **loading)
    else:
        log.warning(
            "Backbone '%s' has RANDOM weights (backbone.checkpoint=random): masks and metrics are "
            "meaningless as segmentations; they only time and exercise the method.",
            name,
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(resolve_device(device))
