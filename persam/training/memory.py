"""Will a training configuration fit in memory? An estimate before starting, and clear errors.

The estimate counts the float32 activations autograd keeps for one step (image encoder blocks
with their attention maps, the decoder passes, the full-resolution mask losses), the parameters
with their gradients and AdamW state, and the rendered scene pool, with a 1.5x margin. It is
meant to catch configurations that are far off (a batch ten times too large), not to be exact.
"""

from __future__ import annotations

import os
from typing import Any

FLOAT = 4
MARGIN = 1.5


class TrainingMemoryError(MemoryError):
    """The training configuration does not fit in the available memory."""


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def estimate_bytes(
    arch: dict[str, Any],
    batch_size: int,
    passes: int,
    num_scenes: int,
    num_params: int,
    extra_objects: int = 0,
) -> int:
    """Estimated peak bytes of one training step (see the module docstring)."""
    size = int(arch.get("image_size", 1024))
    grid = size // int(arch.get("vit_patch_size", 16))
    tokens = grid * grid
    dim = int(arch.get("encoder_embed_dim", 768))
    depth = int(arch.get("encoder_depth", 12))
    heads = int(arch.get("encoder_num_heads", 12))
    window = int(arch.get("window_size", 14))
    mlp = float(arch.get("mlp_ratio", 4.0))
    glob = set(arch.get("encoder_global_attn_indexes", ()))
    chans = int(arch.get("prompt_embed_dim", 256))
    images = 2 * batch_size

    encoder = 0
    for i in range(depth):
        span = tokens if (i in glob or window == 0) else window * window
        encoder += tokens * dim * (12 + 4 * mlp) + 3 * heads * tokens * span
    encoder += tokens * chans * 8 + 6 * size * size
    low = 4 * grid
    decoder = tokens * chans * 40 + low * low * (chans // 8) * 8 + 4 * low * low * 4
    loss = 4 * size * size * 14
    per_image = encoder + passes * (decoder + loss) * (1 + extra_objects)
    activations = images * per_image * FLOAT
    params = num_params * FLOAT * 4  # weights, gradients, AdamW moments
    pool = num_scenes * size * size * 5  # uint8 images, bool masks, uint8 distractor labels
    return int(MARGIN * (activations + params) + pool)


def check_memory(
    arch: dict[str, Any],
    batch_size: int,
    passes: int,
    num_scenes: int,
    num_params: int,
    fraction: float = 0.8,
    extra_objects: int = 0,
) -> int:
    """Raise `TrainingMemoryError` (with what to change) when the estimate does not fit."""
    need = estimate_bytes(arch, batch_size, passes, num_scenes, num_params, extra_objects)
    have = available_bytes()
    if need > fraction * have:
        raise TrainingMemoryError(
            f"This training configuration needs about {need / 2**30:.1f} GiB but only "
            f"{have / 2**30:.1f} GiB of memory is available ({fraction:.0%} may be used). "
            f"Lower train.batch_size (now {batch_size}), train.module.passes (now {passes}), "
            f"train.extra_objects (now {extra_objects}) or "
            f"the input size backbone.image_size (now {arch.get('image_size')}), or "
            f"train.data.num_identities / train.data.scenes_per_identity for the scene pool."
        )
    return need


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is the allocator running out of memory (CPU or CUDA)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text
    )


def out_of_memory_error(
    exc: BaseException, batch_size: int, arch: dict[str, Any]
) -> TrainingMemoryError:
    return TrainingMemoryError(
        f"Training ran out of memory ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
        f"Lower train.batch_size (now {batch_size}) or backbone.image_size (now "
        f"{arch.get('image_size')}), or train.module.passes; other processes may also be using "
        f"the memory."
    )
