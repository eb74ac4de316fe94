"""The architecture of a SAM ViT checkpoint, read from its parameter shapes.

`segment_anything`'s `Sam` keeps almost all of its architecture in the shapes of its state dict:

- image encoder: `patch_embed.proj.weight` (C x 3 x p x p) gives the width C and the patch p;
  `pos_embed` (1 x g x g x C) the grid g, so the input is g * p px; `blocks.<i>` the depth; a
  block's `attn.rel_pos_h` ((2 s - 1) x C / heads) its head count and how far it attends: the
  whole grid (s = g, global attention) or a window (s = window_size); `mlp.lin1` the MLP ratio;
  `neck.0` the output width (the prompt embedding's).
- prompt encoder: `mask_downscaling.3.weight` (mask_in_chans x ...).
- mask decoder: `transformer.layers.<i>` its depth and their `mlp.lin1` its MLP width;
  `mask_tokens` (outputs + 1); `iou_prediction_head.layers.<i>` the IoU head's depth and width.

The shapes leave open only the mask decoder's head count (its projections have the same size
for any count), the IoU head's width when it has a single layer, and which blocks are global when
every block attends over the whole grid (then any choice computes the same). Those come from a
record of the architecture (the `<checkpoint>.json` beside a checkpoint), then from the
configured architecture where it is consistent with the shapes, then from SAM's convention (its
decoder: width 256, MLP 2048, 8 heads); otherwise `ArchitectureError` says what is missing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

# The fields of `persam.backbones.sam.build_architecture` (and of conf/backbone/*.yaml) a SAM ViT
# checkpoint determines; `mlp_ratio` (no config field, 4 in every SAM) is read too.
ARCHITECTURE_FIELDS = (
    "encoder_embed_dim",
    "encoder_depth",
    "encoder_num_heads",
    "encoder_global_attn_indexes",
    "window_size",
    "image_size",
    "vit_patch_size",
    "prompt_embed_dim",
    "mask_in_chans",
    "decoder_depth",
    "decoder_mlp_dim",
    "decoder_num_heads",
    "num_multimask_outputs",
    "iou_head_depth",
    "iou_head_hidden_dim",
)
FIELDS = (*ARCHITECTURE_FIELDS, "mlp_ratio")

# SAM's mask decoder (every released SAM, MobileSAM, EfficientViT-SAM): 8 heads.
SAM_DECODER = {"prompt_embed_dim": 256, "decoder_mlp_dim": 2048, "decoder_depth": 2}
SAM_DECODER_HEADS = 8

_ENCODER = "image_encoder."
_DECODER = "mask_decoder."


class ArchitectureError(ValueError):
    """A state dict's architecture cannot be told (or a record contradicts its shapes)."""


def parameter_shapes(state: Mapping) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a state dict (or of a module's `state_dict()`)."""
    return {str(k): tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def normalise(architecture: Mapping) -> dict:
    """The architecture fields of `architecture` as plain values (tuples for index lists)."""
    out = {}
    for key in FIELDS:
        if key in architecture:
            value = architecture[key]
            if key == "encoder_global_attn_indexes" and value is not None:
                value = tuple(int(i) for i in value)
            elif key == "mlp_ratio" and value is not None:
                value = float(value)
            elif value is not None and not isinstance(value, bool | str):
                value = int(value)
            out[key] = value
    return out


def record_architecture(record: object) -> dict:
    """The architecture a record beside a checkpoint describes: its `architecture` dict
    (`persam.train`'s records), or its top-level architecture fields (a plain architecture
    file, as `../shared/golden/video/video_sam.json`); {} when it has none."""
    if not isinstance(record, Mapping):
        return {}
    arch = record.get("architecture")
    return normalise(arch if isinstance(arch, Mapping) else record)


def _need(shapes: Mapping[str, tuple[int, ...]], key: str, ndim: int) -> tuple[int, ...]:
    shape = shapes.get(key)
    if shape is None:
        raise ArchitectureError(f"it has no parameter '{key}'")
    if len(shape) != ndim:
        raise ArchitectureError(f"'{key}' has shape {list(shape)}, expected {ndim} dimensions")
    return shape


def _indices(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> int:
    """How many numbered submodules `<prefix><i>.` there are (0..n-1, none missing)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for key in shapes if (m := pattern.match(key))}
    if found != set(range(len(found))):
        raise ArchitectureError(f"its '{prefix}<i>' entries are not numbered 0..n-1: {found}")
    return len(found)


def shape_architecture(shapes: Mapping[str, tuple[int, ...]]) -> tuple[dict, list[int]]:
    """The fields the parameter shapes of a SAM ViT state dict determine, and the attention
    span of every encoder block (the grid g for global attention, else the window).

    Leaves out `decoder_num_heads`; `window_size` and `encoder_global_attn_indexes` when every
    block spans the grid; `iou_head_hidden_dim` when the IoU head has one layer."""
    embed, _, patch_h, patch = _need(shapes, _ENCODER + "patch_embed.proj.weight", 4)
    _, grid, grid_w, pos_dim = _need(shapes, _ENCODER + "pos_embed", 4)
    if patch_h != patch or grid_w != grid or pos_dim != embed:
        raise ArchitectureError(
            f"its patch embedding ({embed} x {patch_h} x {patch}) and position embedding "
            f"({grid} x {grid_w} x {pos_dim}) are not a square SAM ViT's"
        )
    depth = _indices(shapes, _ENCODER + "blocks.")
    if depth == 0:
        raise ArchitectureError(f"it has no encoder blocks ('{_ENCODER}blocks.<i>.')")
    spans, head_dims = [], set()
    for i in range(depth):
        rows, head_dim = _need(shapes, f"{_ENCODER}blocks.{i}.attn.rel_pos_h", 2)
        spans.append((rows + 1) // 2)
        head_dims.add(head_dim)
    if len(head_dims) != 1 or embed % min(head_dims):
        raise ArchitectureError(
            f"its encoder blocks' relative positions have head widths {sorted(head_dims)}, "
            f"which do not divide the width {embed} into one head count"
        )
    mlp_hidden = _need(shapes, f"{_ENCODER}blocks.0.mlp.lin1.weight", 2)[0]
    arch: dict = {
        "encoder_embed_dim": embed,
        "encoder_depth": depth,
        "encoder_num_heads": embed // head_dims.pop(),
        "image_size": grid * patch,
        "vit_patch_size": patch,
        "prompt_embed_dim": _need(shapes, _ENCODER + "neck.0.weight", 4)[0],
        "mlp_ratio": mlp_hidden / embed,
    }
    windows = {s for s in spans if s != grid}
    if len(windows) > 1:
        raise ArchitectureError(
            f"its encoder blocks attend over {spans} cells: SAM has one window size"
        )
    if windows:
        arch["window_size"] = windows.pop()
        arch["encoder_global_attn_indexes"] = tuple(i for i, s in enumerate(spans) if s == grid)

    arch["mask_in_chans"] = _need(shapes, "prompt_encoder.mask_downscaling.3.weight", 4)[0]
    arch["decoder_depth"] = _indices(shapes, _DECODER + "transformer.layers.")
    if arch["decoder_depth"] == 0:
        raise ArchitectureError(f"it has no decoder layers ('{_DECODER}transformer.layers.<i>.')")
    arch["decoder_mlp_dim"] = _need(shapes, _DECODER + "transformer.layers.0.mlp.lin1.weight", 2)[0]
    arch["num_multimask_outputs"] = _need(shapes, _DECODER + "mask_tokens.weight", 2)[0] - 1
    arch["iou_head_depth"] = _indices(shapes, _DECODER + "iou_prediction_head.layers.")
    if arch["iou_head_depth"] > 1:
        head = _need(shapes, _DECODER + "iou_prediction_head.layers.0.weight", 2)
        arch["iou_head_hidden_dim"] = head[0]
    return arch, spans


def _layout_fits(window: object, indexes: object, spans: list[int], grid: int) -> bool:
    """Whether (window_size, global indexes) gives every block the span its shapes have."""
    if window is None or indexes is None:
        return False
    indexes = set(indexes)
    if not indexes <= set(range(len(spans))):
        return False
    return all(s == (grid if i in indexes else window) for i, s in enumerate(spans))


def _consistent(key: str, value: object, arch: dict, spans: list[int]) -> bool:
    """Whether a record's or config's `value` of `key` agrees with the shapes (`arch`)."""
    grid = arch["image_size"] // arch["vit_patch_size"]
    if key == "image_size":
        return isinstance(value, int) and value // arch["vit_patch_size"] == grid
    if key in ("window_size", "encoder_global_attn_indexes") and "window_size" not in arch:
        return True  # every block spans the grid: checked as a pair by `_layout_fits`
    if key in arch:
        return value == arch[key]
    return True


def checkpoint_architecture(
    shapes: Mapping[str, tuple[int, ...]],
    record: Mapping | None = None,
    config: Mapping | None = None,
) -> dict:
    """The full architecture of a SAM ViT state dict with these parameter `shapes`.

    `record`: the architecture recorded beside the checkpoint (`record_architecture`); each of
    its fields must agree with the shapes (else `ArchitectureError` naming the field). `config`:
    the configured architecture, used for what the shapes leave open where it agrees with them
    (its decoder head count only when its decoder has the checkpoint's sizes)."""
    arch, spans = shape_architecture(shapes)
    record = normalise(record or {})
    config = normalise(config or {})
    grid = arch["image_size"] // arch["vit_patch_size"]
    for key, value in record.items():
        if not _consistent(key, value, arch, spans):
            raise ArchitectureError(
                f"its record says {key}={value}, but its parameter shapes say "
                f"{arch.get(key) if key != 'image_size' else arch['image_size']}"
            )
    if "window_size" in record and "encoder_global_attn_indexes" in record:
        pair = (record["window_size"], record["encoder_global_attn_indexes"])
        if not _layout_fits(*pair, spans, grid):
            raise ArchitectureError(
                f"its record says window_size={pair[0]}, encoder_global_attn_indexes="
                f"{list(pair[1])}, but its blocks attend over {spans} cells"
            )
    sources = [record, {k: v for k, v in config.items() if _consistent(k, v, arch, spans)}]

    for source in sources:  # image_size: a recorded or configured size of the same grid
        if "image_size" in source:
            arch["image_size"] = source["image_size"]
            break
    if "window_size" not in arch:  # every block spans the whole grid
        for source in sources:
            pair = (source.get("window_size"), source.get("encoder_global_attn_indexes"))
            if _layout_fits(*pair, spans, grid):
                arch["window_size"], arch["encoder_global_attn_indexes"] = pair
                break
        else:
            arch["window_size"], arch["encoder_global_attn_indexes"] = (
                grid,
                tuple(range(len(spans))),
            )
    if "iou_head_hidden_dim" not in arch:  # a one-layer IoU head has no hidden width
        arch["iou_head_hidden_dim"] = next(
            (s["iou_head_hidden_dim"] for s in sources if "iou_head_hidden_dim" in s), 256
        )

    decoder = {k: arch[k] for k in SAM_DECODER}
    if "decoder_num_heads" in record:
        arch["decoder_num_heads"] = record["decoder_num_heads"]
    elif "decoder_num_heads" in config and all(config.get(k) == v for k, v in decoder.items()):
        arch["decoder_num_heads"] = config["decoder_num_heads"]
    elif decoder == SAM_DECODER:
        arch["decoder_num_heads"] = SAM_DECODER_HEADS
    else:
        raise ArchitectureError(
            "its mask decoder's head count is not in its parameter shapes (its decoder, width "
            f"{decoder['prompt_embed_dim']} and MLP {decoder['decoder_mlp_dim']}, is not SAM's "
            f"{SAM_DECODER['prompt_embed_dim']} / {SAM_DECODER['decoder_mlp_dim']} with "
            f"{SAM_DECODER_HEADS} heads)"
        )
    return {key: arch[key] for key in FIELDS}
