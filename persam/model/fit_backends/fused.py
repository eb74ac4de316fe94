"""PerSAM-F's fused backend: the dice + focal loss of the mixed logits and its exact gradient in
one pass over the pixels (no autograd graph, no decoder rerun).

Only the two scalars ``w = (w1, w2)`` are trained and the logits are constants, so every step is
a function of ``w`` alone. ``logits`` (3, H, W) float — SAM's multimask high-resolution logits of
the reference; ``gt`` (H, W) bool — the reference mask. Mixing weights ``[1 - w1 - w2, w1, w2]``.

How the pass works (``x`` = mixed logit, ``t`` = target, ``p = sigmoid(x)``):

* The mixed logit is affine in ``w``: ``x = L0 + w1 (L1 - L0) + w2 (L2 - L0)``; the three rows
  ``(L0, L1 - L0, L2 - L0)`` are precomputed once.
* A pixel's focal term ``alpha_t * ce * (1 - p_t)^gamma`` is ``alpha_t * u^gamma softplus(z)``
  with ``z = x`` (background) or ``z = -x`` (foreground) and ``u = sigmoid(z)``. So the
  foreground pixels are negated once (and stored first) and every pixel runs through one
  target-free body; per-block sums are split into the two groups afterwards.
* The dice needs the global sums ``sum(p t)``, ``sum(p)`` and, for its gradient,
  ``sum(p (1 - p) dx/dw_k)`` per group; the focal derivative is ``u^gamma (gamma v softplus(z)
  + u) dz/dw_k`` per pixel (``v = 1 - u``, computed without cancellation): seven sums per step.
* The pixels are laid out as (3, B, 2048) blocks (padded with exactly neutral pixels), summed in
  the input dtype within a block and in float64 across blocks: ~1e-8 relative error on the cat.
* Under ``torch.compile`` (``fused="compile"``) Inductor turns the whole body into a single
  vectorized, OpenMP-parallel C++ loop over the blocks. ``exp(-|s|)`` is written
  ``exp2(-|s| log2 e)`` and ``log1p`` is a degree-9 polynomial on [0, 1] (<= 1.8e-7 relative
  error) so that the body stays one loop. ``fused="eager"`` runs the same body with plain PyTorch
  ops, chunk by chunk; it is the fallback when compiling fails.

Compilation is paid once per machine and torch version, not once per process: the compiled
artifacts are saved with ``torch.compiler.save_cache_artifacts`` to
``$PERSAM_CACHE_DIR/compile/torch-<version>/`` (default ``~/.cache/persam``) and loaded with
``torch.compiler.load_cache_artifacts`` before the first compile of a later process (Inductor's
FX graph cache then skips the C++ build). ``PERSAM_COMPILE_CACHE=0`` turns this off.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from persam.data.files import atomic_write

log = logging.getLogger(__name__)

FusedMode = Literal["compile", "eager"]

#: Pixels per block of the fused layout (float32 partial sums over a block, float64 across).
BLOCK = 2048
#: z value of a padding pixel: sigmoid(-1000) underflows to exactly 0 in float32 and float64, so
#: a padding pixel adds exactly 1 to the sum of v = 1 - u and exactly 0 to every other sum.
_PAD_Z = -1000.0
#: log1p(e) ~= e * P(e) on [0, 1]: least-squares Chebyshev fit of degree 9 to log1p(e)/e
#: (numpy.polynomial.chebyshev.chebfit on 200001 points, converted to the power basis).
#: Max relative error in float32 Horner evaluation: 1.8e-7 (float32 log1p: 1.2e-7).
_LOG1P_COEFS = (
    0.9999999869643135,
    -0.4999985080345176,
    0.33329099047532806,
    -0.24947808763082174,
    0.19651491727783355,
    -0.15251451240149688,
    0.10533228301679258,
    -0.056435029351492916,
    0.01964916724611333,
    -0.0032140363419254645,
)


def _as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def validate_inputs(logits, gt) -> tuple[Tensor, Tensor]:
    """Check ``logits`` (3, H, W) and ``gt`` (H, W); returns them flat: (3, N) and (N,) bool."""
    logits = _as_tensor(logits)
    gt = _as_tensor(gt)
    if logits.dim() < 2 or logits.shape[0] != 3:
        raise ValueError(
            "logits must have shape (3, H, W) (SAM's three multimask logits); "
            f"got {tuple(logits.shape)}"
        )
    if tuple(gt.shape) != tuple(logits.shape[1:]):
        raise ValueError(
            f"gt must have the logits' spatial shape {tuple(logits.shape[1:])}; "
            f"got {tuple(gt.shape)}"
        )
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point; got {logits.dtype}")
    gt = (gt if gt.dtype == torch.bool else gt > 0).reshape(-1).to(logits.device)
    if not bool(gt.any()):
        raise ValueError(
            "The reference mask (gt) is empty: PerSAM-F needs at least one foreground pixel to "
            "fit the scale weights. Check the reference annotation (official rule: R channel > 0)."
        )
    logits = logits.reshape(3, -1)
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits contain NaN or infinite values; cannot fit the scale weights.")
    return logits, gt


def combine(
    p_fg, p_bg, dp_fg, dp_bg, f_fg, f_bg, df_fg, df_bg, n_pos, n_neg, alpha: float
) -> tuple[Tensor, Tensor]:
    """Dice + focal loss and its gradient from the per-group sums (any backend).

    Per group (foreground ``fg``, background ``bg``): ``p`` = sum of the predicted probability,
    ``f`` = sum of ``u^gamma softplus(z)`` and ``dp``, ``df`` their gradients (2,) w.r.t. ``w``.
    -> loss (0-d), gradient (2,).
    """
    a_pos, a_neg = (alpha, 1 - alpha) if alpha >= 0 else (1.0, 1.0)
    num = 2 * p_fg + 1  # 2 sum(p t) + 1
    den = p_fg + p_bg + n_pos + 1  # sum(p) + sum(t) + 1
    dice = 1 - num / den
    ddice = -(2 * dp_fg * den - num * (dp_fg + dp_bg)) / (den * den)
    n_all = n_pos + n_neg
    focal = (a_pos * f_fg + a_neg * f_bg) / n_all
    dfocal = (a_pos * df_fg + a_neg * df_bg) / n_all
    return dice + focal, ddice + dfocal


@dataclass(frozen=True)
class FusedInputs:
    """Per-pixel constants of the fused pass, split by target once.

    ``z`` (3, B, BLOCK): rows ``(z0, z1 - z0, z2 - z0)`` with ``z = -logits`` for foreground
    pixels and ``z = logits`` for background ones; the foreground fills the first ``Bp`` blocks,
    the background the rest, each padded with neutral pixels to whole blocks.
    ``fg_block`` float64 (B,): 1 for foreground blocks, 0 otherwise.
    ``counts`` float64 (3,): ``[n_pos, n_neg, n_pad_pos]``.
    """

    z: Tensor
    fg_block: Tensor
    counts: Tensor

    @property
    def num_pixels(self) -> int:
        return int(self.counts[0].item() + self.counts[1].item())


def _pad_to_blocks(z: Tensor) -> tuple[Tensor, int]:
    """(3, n) -> (3, n + pad) with ``pad`` neutral pixels, n + pad a multiple of BLOCK."""
    pad = (-z.shape[1]) % BLOCK
    filler = torch.zeros(3, pad, dtype=z.dtype, device=z.device)
    filler[0] = _PAD_Z
    return torch.cat([z, filler], dim=1), pad


def prepare_fused_inputs(logits, gt, dtype: torch.dtype | None = None) -> FusedInputs:
    """Split ``logits`` (3, H, W) by ``gt`` (H, W) into z-space :class:`FusedInputs`.

    ``dtype`` defaults to the logits' dtype (float32 for SAM). The differences ``z_k - z0`` are
    formed in float64 and rounded once.
    """
    flat, mask = validate_inputs(logits, gt)
    if dtype is None:
        dtype = flat.dtype if flat.dtype in (torch.float32, torch.float64) else torch.float32
    x = flat.double()
    rows = torch.stack([x[0], x[1] - x[0], x[2] - x[0]])  # (3, N): x = r0 + w1 r1 + w2 r2
    zpos, pad_pos = _pad_to_blocks(-rows[:, mask])
    zneg, _ = _pad_to_blocks(rows[:, ~mask])
    z = torch.cat([zpos, zneg], dim=1).to(dtype).reshape(3, -1, BLOCK).contiguous()
    fg_block = torch.zeros(z.shape[1], dtype=torch.float64, device=z.device)
    fg_block[: zpos.shape[1] // BLOCK] = 1
    n_pos = int(mask.sum())
    counts = torch.tensor(
        [n_pos, mask.numel() - n_pos, pad_pos], dtype=torch.float64, device=z.device
    )
    # The number of blocks varies with the image: compile it as a dynamic size.
    torch._dynamo.maybe_mark_dynamic(z, 1)
    torch._dynamo.maybe_mark_dynamic(fg_block, 0)
    return FusedInputs(z, fg_block, counts)


_LOG2E = 1.0 / math.log(2.0)


def _block_sums(z: Tensor, w1: Tensor, w2: Tensor, gamma: float, fast: bool) -> Tensor:
    """Per-block sums of the fused pass: ``z`` (3, B, BLOCK) -> float64 (7, B).

    ``s = z0 + w1 d1 + w2 d2``, ``u = sigmoid(s)``, ``v = 1 - u``, ``h = u v``,
    ``f = u^gamma softplus(s)``, ``g = df/ds``; rows: ``[u, v, h d1, h d2, f, g d1, g d2]``
    summed over each block (in the input dtype), then converted to float64.

    ``fast`` (the compiled float32 path): ``exp(-|s|)`` as ``exp2(-|s| log2 e)`` and ``log1p``
    as a polynomial. Both keep float32 accuracy, and neither is one of the ops Inductor's CPU
    heuristic refuses to recompute, so the whole body fuses into the block-sum loop instead of
    round-tripping ``s`` and ``exp(-|s|)`` through memory.
    """
    z0, d1, d2 = z[0], z[1], z[2]
    s = z0 + w1 * d1 + w2 * d2
    e = torch.exp2(s.abs() * -_LOG2E) if fast else torch.exp(-s.abs())
    r = 1 / (1 + e)
    er = e * r
    nonneg = s >= 0
    u = torch.where(nonneg, r, er)
    v = torch.where(nonneg, er, r)
    if fast:
        acc = _LOG1P_COEFS[-1] * e + _LOG1P_COEFS[-2]
        for c in _LOG1P_COEFS[-3::-1]:
            acc = acc * e + c
        log1p_e = acc * e
    else:
        log1p_e = torch.log1p(e)
    sp = torch.clamp_min(s, 0) + log1p_e
    ug = u * u if gamma == 2.0 else u.pow(gamma)
    f = ug * sp
    g = ug * (gamma * v * sp + u)
    h = u * v
    terms = (u, v, h * d1, h * d2, f, g * d1, g * d2)
    return torch.stack([t.sum(-1) for t in terms]).to(torch.float64)


def _loss_and_grad_impl(
    z: Tensor,
    fg_block: Tensor,
    counts: Tensor,
    w: Tensor,
    alpha: float,
    gamma: float,
    fast: bool,
    chunk_blocks: int = 0,
) -> tuple[Tensor, Tensor]:
    """Loss (0-d, dtype of ``w``) and its gradient (shape of ``w``) in one pass over ``z``.

    ``chunk_blocks > 0`` (eager): process that many blocks at a time so the ~30 temporaries stay
    in cache (~2.5x faster than whole-image temporaries).
    """
    wz = w.reshape(-1).to(z.dtype)
    if chunk_blocks > 0:
        sums = torch.cat(
            [
                _block_sums(z[:, i : i + chunk_blocks], wz[0], wz[1], gamma, fast)
                for i in range(0, z.shape[1], chunk_blocks)
            ],
            dim=1,
        )
    else:
        sums = _block_sums(z, wz[0], wz[1], gamma, fast)  # (7, B)
    sp_ = (sums * fg_block).sum(-1)  # foreground group (z = -x): p = v
    sn_ = (sums * (1 - fg_block)).sum(-1)  # background group (z = x): p = u
    # Each padding pixel adds exactly 1 to the foreground sum of v; dp/dz = -h where p = 1 - u.
    loss, grad = combine(
        sp_[1] - counts[2],
        sn_[0],
        -sp_[2:4],
        sn_[2:4],
        sp_[4],
        sn_[4],
        sp_[5:7],
        sn_[5:7],
        counts[0],
        counts[1],
        alpha,
    )
    loss = loss.to(w.dtype)
    grad = grad.to(w.dtype).reshape(w.shape)
    return loss, grad


#: Blocks per chunk of the eager implementation (32 x 2048 pixels: temporaries fit in L2).
EAGER_CHUNK_BLOCKS = 32
_COMPILED: Callable | None = None
_COMPILE_FAILED = False
#: Inductor options for the fused kernel: contract mul+add into FMAs (~10% faster), let the
#: per-pixel body (~60 ops feeding 7 block sums) be inlined into the reduction loop instead of
#: materialized, and compile in-process (one C++ kernel: a worker pool only adds ~2-3 s cold).
COMPILE_OPTIONS = {
    "cpp.enable_floating_point_contract_flag": "fast",
    "compile_threads": 1,
    "realize_reads_threshold": 1000,
    "realize_opcount_threshold": 100_000,
    "realize_acc_reads_threshold": 1000,
}


def compile_cache_dir() -> Path | None:
    """Folder of this torch version's saved compile artifacts (None: caching is off)."""
    if os.environ.get("PERSAM_COMPILE_CACHE", "1") == "0":
        return None
    root = os.environ.get("PERSAM_CACHE_DIR") or Path.home() / ".cache" / "persam"
    return Path(root) / "compile" / f"torch-{torch.__version__}"


def _artifact_path() -> Path | None:
    folder = compile_cache_dir()
    return None if folder is None else folder / "scale_weights_fused.bin"


def _load_artifacts() -> bool:
    """Hot-load the saved compile artifacts, if any; True when loaded."""
    path = _artifact_path()
    if path is None or not path.is_file():
        return False
    try:
        info = torch.compiler.load_cache_artifacts(path.read_bytes())
        if info is None:  # torch could not read it (it says why)
            raise ValueError("unreadable artifacts")
    except Exception as exc:  # noqa: BLE001 - a stale or corrupt cache only costs a compile
        log.warning("ignoring the compile cache %s (%s); compiling afresh", path, exc)
        return False
    return True


def _save_artifacts() -> None:
    """Save this process's compile artifacts (atomically: parallel jobs may race)."""
    path = _artifact_path()
    if path is None:
        return
    try:
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            return
        atomic_write(path, lambda f: f.write(saved[0]), binary=True)
    except OSError as exc:
        log.warning("could not save the compile cache to %s (%s)", path, exc)


def _compiled() -> Callable:
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(_loss_and_grad_impl, fullgraph=True, options=COMPILE_OPTIONS)
    return _COMPILED


#: Seconds this process spent compiling (and loading the compile cache), by (dtype, device type).
COMPILE_SECONDS: dict[tuple[torch.dtype, str], float] = {}


def warm_up(inputs: FusedInputs, alpha: float = 0.25, gamma: float = 2.0) -> float:
    """Compile the kernel for ``inputs``' dtype and device now (once per process); returns the
    seconds spent.

    Loads the on-disk compile cache first and saves it after a compile that missed it, so only
    the first process on a machine (per torch version) pays the C++ build.
    """
    dtype = inputs.z.dtype
    key = (dtype, inputs.z.device.type)
    if key in COMPILE_SECONDS or _COMPILE_FAILED:
        return 0.0
    t0 = time.perf_counter()
    loaded = _load_artifacts()
    w = torch.full((2, 1), 1 / 3, dtype=dtype, device=inputs.z.device)
    fused_loss_and_grad(inputs, w, alpha, gamma, "compile")
    if not loaded and not _COMPILE_FAILED:
        _save_artifacts()
    COMPILE_SECONDS[key] = time.perf_counter() - t0
    return COMPILE_SECONDS[key]


def compile_available() -> bool:
    """False once compiling the fused kernel has failed in this process (eager is in use)."""
    return not _COMPILE_FAILED


def fused_loss_and_grad(
    inputs: FusedInputs,
    w: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    fused: FusedMode = "compile",
) -> tuple[Tensor, Tensor]:
    """Loss (0-d) and d loss / d ``w`` (shape of ``w``: (2, 1) or (2,)) in one pass.

    ``fused="compile"``: the ``torch.compile``-d kernel (compiled once per process and dtype;
    the block count is dynamic, so other image sizes reuse it). If compilation fails it logs a
    warning once and falls back to ``"eager"``, the same math in plain PyTorch ops.
    """
    global _COMPILE_FAILED
    if fused not in ("compile", "eager"):
        raise ValueError(f"fused must be 'compile' or 'eager'; got {fused!r}")
    w = w.detach()
    alpha, gamma = float(alpha), float(gamma)
    args = (inputs.z, inputs.fg_block, inputs.counts, w, alpha, gamma)
    if fused == "compile" and not _COMPILE_FAILED:
        try:
            return _compiled()(*args, inputs.z.dtype == torch.float32)
        except Exception as exc:  # noqa: BLE001 - any compiler failure -> eager fallback
            _COMPILE_FAILED = True
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            log.warning(
                "torch.compile of the fused PerSAM-F loss failed (%s: %s); falling back to the "
                "eager implementation (same results, several times slower). Set fused=eager "
                "to skip the attempt.",
                type(exc).__name__,
                first[:300],
            )
    return _loss_and_grad_impl(*args, False, EAGER_CHUNK_BLOCKS)
