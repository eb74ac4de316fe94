"""PerSAM-F scale-aware fine-tuning: learn the weights that mix SAM's three multimask logits.

The official loop (``persam_f.py``) reruns SAM's decoder every step and back-propagates an
autograd dice + sigmoid-focal loss through the weighted sum of the three full-resolution logits.
Only the two scalars ``w = (w1, w2)`` are trained and the logits are constants, so every step is
a function of ``w`` alone. Here the loss *and its exact gradient* are computed in one fused pass
over the pixels and handed to a normal optimizer through a ``torch.autograd.Function``, inside a
real ``lightning.Trainer``.

Shapes: ``logits`` (3, H, W) float — SAM's multimask high-resolution logits of the reference
image (``SamPredictor.predict(..., multimask_output=True, return_logits=True)``); ``gt`` (H, W)
bool — the reference mask (official: R channel of the annotation > 0). Mixing weights are
``[1 - w1 - w2, w1, w2]``; the trainable parameter is ``w`` (2, 1), initialised to 1/3.

How the fused pass works (``x`` = mixed logit, ``t`` = target, ``p = sigmoid(x)``):

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
  the input dtype within a block and in float64 across blocks: ~1e-8 relative error on the cat,
  as accurate as float64 accumulation and faster than Inductor's float32 cascade sums.
* Under ``torch.compile`` (``fused="compile"``) Inductor turns the whole body into a single
  vectorized, OpenMP-parallel C++ loop over the blocks. Two substitutions keep it one loop and
  fast: ``exp(-|s|)`` is written ``exp2(-|s| log2 e)`` (Inductor's CPU heuristic materializes
  reused ``exp`` results, which split the loop and cost a round trip through memory) and
  ``log1p`` is a degree-9 polynomial on [0, 1] (<= 1.8e-7 relative error, float32 precision;
  Sleef's ``log1p`` was a third of the kernel). ``fused="eager"`` runs the same body with plain
  PyTorch ops (``exp``, ``log1p``), chunk by chunk; it is the fallback when compiling fails.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from persam.losses import dice_loss, focal_loss

log = logging.getLogger(__name__)

FusedMode = Literal["compile", "eager"]

__all__ = [
    "FitResult",
    "FusedInputs",
    "NonFiniteLossError",
    "ScaleWeightsModule",
    "compile_available",
    "fit_scale_weights",
    "fused_loss_and_grad",
    "fused_scale_loss",
    "mix_masks",
    "prepare_fused_inputs",
    "reference_loss",
    "validate_inputs",
]

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


class NonFiniteLossError(FloatingPointError):
    """The scale-weight loss became NaN or infinite."""


# --------------------------------------------------------------------------------------------
# Reference (autograd) definitions, as in the official code
# --------------------------------------------------------------------------------------------


def mix_masks(logits, weights):
    """Weighted sum of the three mask logits, ``sum_k weights[k] * logits[k]``.

    ``logits`` (3, ...) and ``weights`` (3,) or (3, 1) -> (...). Tensors or numpy arrays (the
    result has the type of ``logits``); the same arithmetic as the official code.
    """
    if isinstance(logits, np.ndarray):
        w = np.asarray(weights, dtype=logits.dtype).reshape((3,) + (1,) * (logits.ndim - 1))
        return (logits * w).sum(0)
    w = torch.as_tensor(weights, dtype=logits.dtype, device=logits.device)
    return (logits * w.reshape((3,) + (1,) * (logits.dim() - 1))).sum(0)


def reference_loss(
    w: Tensor, logits: Tensor, gt: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """The official PerSAM-F loss as an autograd graph (test oracle and slow baseline).

    ``w`` (2, 1) = ``(w1, w2)``; ``logits`` (3, H, W); ``gt`` (H, W) bool -> scalar
    dice + focal loss of ``(1 - w1 - w2) L0 + w1 L1 + w2 L2``, exactly as ``persam_f.py``.
    """
    target = gt.reshape(1, -1).to(logits.dtype)
    weights = torch.cat((1 - w.sum(0).unsqueeze(0), w), dim=0)  # (3, 1)
    mixed = (logits.flatten(1) * weights).sum(0).unsqueeze(0)  # (1, H*W)
    return dice_loss(mixed, target) + focal_loss(mixed, target, alpha=alpha, gamma=gamma)


# --------------------------------------------------------------------------------------------
# Fused loss + gradient
# --------------------------------------------------------------------------------------------


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
    n_pos, n_neg, pad_pos = counts[0], counts[1], counts[2]
    a_pos, a_neg = (alpha, 1 - alpha) if alpha >= 0 else (1.0, 1.0)
    s_pt = sp_[1] - pad_pos  # sum(p t): each padding pixel adds exactly 1 to sum(v)
    s_p = s_pt + sn_[0]  # sum(p)
    ds_pt = -sp_[2:4]  # d sum(p t) / dw: dp/dz = -h on the foreground (p = 1 - u)
    ds_p = sn_[2:4] - sp_[2:4]
    num = 2 * s_pt + 1
    den = s_p + n_pos + 1
    dice = 1 - num / den
    ddice = -(2 * ds_pt * den - num * ds_p) / (den * den)
    n_all = n_pos + n_neg
    focal = (a_pos * sp_[4] + a_neg * sn_[4]) / n_all
    dfocal = (a_pos * sp_[5:7] + a_neg * sn_[5:7]) / n_all
    loss = (dice + focal).to(w.dtype)
    grad = (ddice + dfocal).to(w.dtype).reshape(w.shape)
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


def _compiled() -> Callable:
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(_loss_and_grad_impl, fullgraph=True, options=COMPILE_OPTIONS)
    return _COMPILED


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


class _FusedScaleLoss(torch.autograd.Function):
    """Forward: the fused loss; backward: the gradient computed in the same pass."""

    @staticmethod
    def forward(ctx, w, z, fg_block, counts, alpha, gamma, fused):
        inputs = FusedInputs(z, fg_block, counts)
        loss, grad = fused_loss_and_grad(inputs, w, alpha, gamma, fused)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad_output * grad, None, None, None, None, None, None


def fused_scale_loss(
    w: Tensor,
    inputs: FusedInputs,
    alpha: float = 0.25,
    gamma: float = 2.0,
    fused: FusedMode = "compile",
) -> Tensor:
    """The PerSAM-F loss at ``w`` (2, 1) as a differentiable 0-d tensor (exact gradient)."""
    return _FusedScaleLoss.apply(w, inputs.z, inputs.fg_block, inputs.counts, alpha, gamma, fused)


# --------------------------------------------------------------------------------------------
# Lightning
# --------------------------------------------------------------------------------------------


class _AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` (same arithmetic) without the per-step CUDA-graph capture check
    for CPU parameters: with ``lightning`` imported (it sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``)
    that check probes NVML, i.e. ``dlopen``s ``libnvidia-ml`` on every step (0.1-1 ms)."""

    def _accelerator_graph_capture_health_check(self) -> None:
        if any(p.device.type != "cpu" for g in self.param_groups for p in g["params"]):
            super()._accelerator_graph_capture_health_check()


class ScaleWeightsModule(L.LightningModule):
    """The two PerSAM-F scale weights, trained on the fused loss.

    ``logits`` (3, H, W), ``gt`` (H, W) (or precomputed ``inputs``). ``weights`` is the (2, 1)
    parameter ``(w1, w2)`` (official name and shape); :attr:`mask_weights` gives the three mixing
    weights. Every step's loss is kept (as tensors, no host sync) in :attr:`losses`, and logged
    as ``"loss"`` through ``self.log`` (the Trainer's ``log_every_n_steps`` decides how often the
    logger writes it).
    """

    def __init__(
        self,
        logits=None,
        gt=None,
        *,
        inputs: FusedInputs | None = None,
        init: float = 1 / 3,
        lr: float = 1e-3,
        eps: float = 1e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        t_max: int = 1000,
        alpha: float = 0.25,
        gamma: float = 2.0,
        fused: FusedMode = "compile",
        log_loss: bool = True,
        log_name: str = "loss",
        finite_check_every: int | None = None,
    ) -> None:
        super().__init__()
        if fused not in ("compile", "eager"):
            raise ValueError(f"fused must be 'compile' or 'eager'; got {fused!r}")
        if inputs is None:
            if logits is None or gt is None:
                raise ValueError("pass logits and gt, or precomputed inputs=")
            inputs = prepare_fused_inputs(logits, gt)
        self.weights = nn.Parameter(torch.full((2, 1), float(init)))
        self.register_buffer("z", inputs.z, persistent=False)
        self.register_buffer("fg_block", inputs.fg_block, persistent=False)
        self.register_buffer("counts", inputs.counts, persistent=False)
        self.lr, self.eps, self.weight_decay, self.betas = lr, eps, weight_decay, tuple(betas)
        self.t_max = int(t_max)
        self.alpha, self.gamma, self.fused = float(alpha), float(gamma), fused
        self.log_loss = log_loss
        self.log_name = log_name
        # None: every step on CPU (a free check), every 100 steps elsewhere (avoids syncs).
        self.finite_check_every = finite_check_every
        self._losses: list[Tensor] = []

    def __setattr__(self, name: str, value) -> None:
        # Lightning sets `_current_fx_name` (a str) around each of its ~13 per-step hook calls;
        # nn.Module.__setattr__'s parameter/buffer/module bookkeeping then costs ~0.3 ms a step.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def inputs(self) -> FusedInputs:
        return FusedInputs(self.z, self.fg_block, self.counts)

    @property
    def mask_weights(self) -> list[float]:
        """The three mixing weights ``[1 - w1 - w2, w1, w2]`` (computed as the official code)."""
        w = self.weights.detach()
        return torch.cat((1 - w.sum(0).unsqueeze(0), w), dim=0).flatten().tolist()

    @property
    def losses(self) -> np.ndarray:
        """Loss of every training step so far, (steps,) float32 (before that step's update)."""
        if not self._losses:
            return np.zeros(0, dtype=np.float32)
        return torch.stack(self._losses).cpu().numpy()

    def forward(self) -> Tensor:
        """The loss at the current weights (differentiable w.r.t. ``weights``)."""
        return _FusedScaleLoss.apply(
            self.weights, self.z, self.fg_block, self.counts, self.alpha, self.gamma, self.fused
        )

    def on_train_start(self) -> None:
        if self.finite_check_every is None:
            self.finite_check_every = 1 if self.device.type == "cpu" else 100

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss = self()
        self._losses.append(loss.detach())
        every = self.finite_check_every or 1
        if len(self._losses) % every == 0 and not math.isfinite(loss.item()):
            self._raise_non_finite()
        if self.log_loss and self._is_logging_step():
            self.log(
                self.log_name,
                loss,
                on_step=True,
                on_epoch=False,
                prog_bar=False,
                logger=bool(self.trainer.loggers),
            )
        return loss

    def _is_logging_step(self) -> bool:
        """True on the steps at which the Trainer writes step metrics to its loggers.

        ``self.log`` costs ~1-3 ms per call in Lightning 2.6 (it re-``.to()``s its result
        collection), more than the fused step itself, so the loss is only handed to Lightning on
        the steps the logger connector will write (every ``log_every_n_steps``) and on the last.
        """
        trainer = self.trainer
        n = trainer.log_every_n_steps
        step = self.global_step + 1
        return (n > 0 and step % n == 0) or step == trainer.max_steps

    def on_train_end(self) -> None:
        if self._losses and not bool(torch.isfinite(torch.stack(self._losses)).all()):
            self._raise_non_finite()

    def _raise_non_finite(self) -> None:
        losses = self.losses
        step = int(np.flatnonzero(~np.isfinite(losses))[0])
        raise NonFiniteLossError(
            f"PerSAM-F scale-weight loss is {losses[step]} at step {step} (mask weights "
            f"{self.mask_weights}). The logits are finite, so the weights diverged: lower the "
            "learning rate or check the logits' scale."
        )

    def configure_optimizers(self):
        optimizer = _AdamW(
            self.parameters(),
            lr=self.lr,
            eps=self.eps,
            weight_decay=self.weight_decay,
            betas=self.betas,
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.t_max)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }


@dataclass
class FitResult:
    """Outcome of :func:`fit_scale_weights`.

    ``weights`` (3,) float32 ``[1 - w1 - w2, w1, w2]``; ``losses`` (steps,) the loss of every
    step (evaluated before that step's update, as the official loop logs it); ``final_loss`` the
    loss at the returned weights; ``seconds`` the wall time of the whole call (input preparation,
    Trainer, fit, including a first-call compile); ``fit_seconds`` that of ``trainer.fit``;
    ``backend`` the fused implementation actually used (``compile`` or ``eager``).
    """

    weights: np.ndarray
    losses: np.ndarray
    seconds: float
    final_loss: float
    fit_seconds: float = math.nan
    backend: str = "compile"


class _Steps(torch.utils.data.Dataset):
    """``n`` empty batches: the data is in the module, a batch is only a step's tick."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple:
        return ()


@contextlib.contextmanager
def _quiet_lightning(enabled: bool) -> Iterator[None]:
    """Silence Lightning's per-fit banner (device info) and its worker-count hint."""
    if not enabled:
        yield
        return
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def fit_scale_weights(
    logits,
    gt,
    steps: int = 1000,
    lr: float = 1e-3,
    eps: float = 1e-4,
    weight_decay: float = 0.01,
    init: float = 1 / 3,
    alpha: float = 0.25,
    gamma: float = 2.0,
    fused: FusedMode = "compile",
    logger=None,
    accelerator: str = "cpu",
    log_every_n_steps: int = 50,
    enable_progress_bar: bool = False,
    quiet: bool = True,
    num_threads: int | None = None,
    trainer: Callable[..., L.Trainer] | None = None,
    log_name: str = "loss",
) -> FitResult:
    """Fit the PerSAM-F scale weights with a ``lightning.Trainer`` (official schedule).

    ``logits`` (3, H, W) float and ``gt`` (H, W) bool (tensors or numpy). AdamW(lr, eps,
    weight_decay) + CosineAnnealingLR(T_max=steps) stepped every step, ``steps`` steps, loss =
    dice + sigmoid focal(alpha, gamma) of the mixed logits, via the fused loss+gradient kernel.
    ``logger``: a Lightning logger (CSVLogger, WandbLogger, ...) or None for none.
    ``trainer``: a ``lightning.Trainer`` factory (the ``trainer`` config group, ``_partial_``)
    completed here with the fit's steps and logger; None: ``lightning.Trainer`` on ``accelerator``.
    ``num_threads``: ``torch.set_num_threads`` for the duration of the fit (None: unchanged).
    The compiled kernel is parallel only if it was first compiled with >= 2 threads; on a
    machine shared with other busy processes, 1 thread (or ``OMP_WAIT_POLICY=passive`` set
    before torch is imported) avoids OpenMP spin-wait stalls that can cost 5-10x.
    Raises ValueError for bad inputs (e.g. an empty ``gt``), NonFiniteLossError if the loss
    becomes NaN/inf.
    """
    t0 = time.perf_counter()
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    steps = int(steps)
    module = ScaleWeightsModule(
        logits,
        gt,
        init=init,
        lr=lr,
        eps=eps,
        weight_decay=weight_decay,
        t_max=steps,
        alpha=alpha,
        gamma=gamma,
        fused=fused,
        log_name=log_name,
    )
    kwargs = dict(
        max_steps=steps,
        max_epochs=1,
        logger=logger if logger is not None else False,
        enable_checkpointing=False,
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
        log_every_n_steps=log_every_n_steps,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    if trainer is None:
        trainer = partial(L.Trainer, accelerator=accelerator, devices=1)
    loader = torch.utils.data.DataLoader(_Steps(steps), batch_size=None)
    threads_before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        with _quiet_lightning(quiet):
            fitter = trainer(**kwargs)
            t_fit = time.perf_counter()
            fitter.fit(module, train_dataloaders=loader)
            fit_seconds = time.perf_counter() - t_fit
        with torch.no_grad():
            final_loss = float(module())
    finally:
        if num_threads is not None:
            torch.set_num_threads(threads_before)
    losses = module.losses
    if len(losses) != steps:
        raise RuntimeError(f"the Trainer ran {len(losses)} steps instead of {steps}")
    backend = "eager" if fused == "eager" or not compile_available() else "compile"
    return FitResult(
        weights=np.asarray(module.mask_weights, dtype=np.float32),
        losses=losses,
        seconds=time.perf_counter() - t0,
        final_loss=final_loss,
        fit_seconds=fit_seconds,
        backend=backend,
    )
