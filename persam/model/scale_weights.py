"""PerSAM-F scale-aware fine-tuning: learn the two weights that mix SAM's three multimask logits.

The official loop (``persam_f.py``) reruns SAM's decoder every step and back-propagates an
autograd dice + sigmoid-focal loss through the weighted sum of the three full-resolution logits,
1000 AdamW steps (lr 1e-3, eps 1e-4, cosine annealing). The decoder's outputs do not depend on
the weights, so here it runs once, and the fit is a small ``LightningModule`` (the parameter
``weights`` (2, 1) = ``(w1, w2)``, mixing weights ``[1 - w1 - w2, w1, w2]``). Two loops drive
it to the same weights, bit for bit (``loop``):

* ``plain`` (default): the module's own ``configure_optimizers`` stepped in a plain PyTorch loop
  (:func:`fit_plain`), the gradient taken straight from the backend; the loss curve goes to
  the logger as the Trainer logs it. A step costs the backend plus AdamW (~0.1 ms).
* ``trainer``: a real ``lightning.Trainer`` (the ``trainer`` config group: its accelerator,
  callbacks, precision, profiler), ~1 ms of hooks and logging a step.

The loss comes from one of three backends, all with the same value and gradient:

* ``taylor`` (default, :mod:`persam.model.fit_backends.taylor`): a polynomial model of the pixel sums
  around the current weights, rebuilt when the weights leave its trust radius; truncation error
  provably <= 1e-9; a step costs microseconds, a rebuild one pass over the pixels.
* ``fused`` (:mod:`persam.model.fit_backends.fused`): loss and exact gradient in one pass over the
  pixels per step, ``torch.compile``-d (``fused="compile"``) or plain PyTorch (``"eager"``).
* ``reference``: the official autograd graph (:func:`reference_loss`, :mod:`persam.model.losses`);
  the oracle the tests compare the others with.

Shapes: ``logits`` (3, H, W) float — SAM's multimask high-resolution logits of the reference
(``SamPredictor.predict(..., multimask_output=True, return_logits=True)``); ``gt`` (H, W) bool —
the reference mask (official: R channel of the annotation > 0).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from persam.data.files import atomic_write
from persam.model.fit_backends.fused import (
    FusedMode,
    compile_available,
    fused_loss_and_grad,
    prepare_fused_inputs,
    validate_inputs,
    warm_up,
)
from persam.model.fit_backends.taylor import MIN_STEPS, TaylorBackend
from persam.model.losses import dice_loss, focal_loss

log = logging.getLogger(__name__)

Backend = Literal["taylor", "fused", "reference"]
Loop = Literal["plain", "trainer"]

__all__ = [
    "FitResult",
    "NonFiniteLossError",
    "ScaleWeightsModule",
    "fit_plain",
    "fit_scale_weights",
    "make_loss",
    "mix_masks",
    "reference_loss",
]


class NonFiniteLossError(FloatingPointError):
    """The scale-weight loss became NaN or infinite."""


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


class _LossWithGrad(torch.autograd.Function):
    """Bridge a backend that returns (loss, gradient) at ``w`` into autograd."""

    @staticmethod
    def forward(ctx, w, backend):
        loss, grad = backend(w.detach())
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad_output * grad, None


class _FusedBackend:
    """The direct fused pass as a ``w -> (loss, grad)`` callable (inputs follow ``w``'s device)."""

    def __init__(self, logits, gt, alpha: float, gamma: float, mode: FusedMode) -> None:
        self.inputs = prepare_fused_inputs(logits, gt)
        self.alpha, self.gamma, self.mode = alpha, gamma, mode

    def _to(self, device: torch.device) -> None:
        if self.inputs.z.device != device:
            z, fg_block, counts = self.inputs.z, self.inputs.fg_block, self.inputs.counts
            self.inputs = type(self.inputs)(z.to(device), fg_block.to(device), counts.to(device))

    def warm_up(self, w: Tensor) -> float:
        """Compile for ``w``'s device now (if compiling); returns the seconds spent."""
        self._to(w.device)
        return warm_up(self.inputs, self.alpha, self.gamma) if self.mode == "compile" else 0.0

    def __call__(self, w: Tensor) -> tuple[Tensor, Tensor]:
        self._to(w.device)
        return fused_loss_and_grad(self.inputs, w, self.alpha, self.gamma, self.mode)


def make_loss(
    logits,
    gt,
    backend: Backend = "taylor",
    alpha: float = 0.25,
    gamma: float = 2.0,
    fused: FusedMode = "compile",
) -> Callable[[Tensor], Tensor]:
    """The PerSAM-F loss as a function of ``w`` (2, 1), differentiable, from ``backend``.

    The returned callable has ``.backend`` (the object doing the work, or None for
    ``reference``) and ``.warm_up(w0)`` (prepare at the initial weights, compiling if needed;
    returns the seconds spent compiling).
    """
    alpha, gamma = float(alpha), float(gamma)
    if fused not in ("compile", "eager"):
        raise ValueError(f"fused must be 'compile' or 'eager'; got {fused!r}")
    if backend == "reference":
        flat, mask = validate_inputs(logits, gt)
        on_device = {flat.device: (flat, mask)}

        def loss_fn(w: Tensor) -> Tensor:
            if w.device not in on_device:
                on_device[w.device] = (flat.to(w.device), mask.to(w.device))
            x, t = on_device[w.device]
            return reference_loss(w, x, t, alpha, gamma)

        loss_fn.backend = None
        loss_fn.warm_up = lambda w: 0.0
        return loss_fn
    if backend == "fused":
        impl = _FusedBackend(logits, gt, alpha, gamma, fused)
        warm = impl.warm_up

    elif backend == "taylor":
        # The direct pass is built only if the expansion is not worth it (huge logit spreads).
        direct = functools.partial(_FusedBackend, logits, gt, alpha, gamma, fused)
        mode = "compile" if fused == "compile" and compile_available() else "eager"
        impl = TaylorBackend(
            logits, gt, alpha, gamma, fallback_factory=direct, min_steps=MIN_STEPS[mode]
        )
        warm = impl.warm_up
    else:
        raise ValueError(f"backend must be 'taylor', 'fused' or 'reference'; got {backend!r}")

    def loss_fn(w: Tensor) -> Tensor:
        return _LossWithGrad.apply(w, impl)

    loss_fn.backend = impl
    loss_fn.warm_up = warm
    return loss_fn


class ScaleWeightsModule(L.LightningModule):
    """The two PerSAM-F scale weights, trained with AdamW + cosine annealing on ``loss_fn``.

    ``loss_fn``: ``w`` (2, 1) -> differentiable 0-d loss (:func:`make_loss`). ``weights`` is the
    (2, 1) parameter ``(w1, w2)`` (official name and shape); :attr:`mask_weights` gives the three
    mixing weights. Every step's loss is kept in :attr:`losses` and logged as ``log_name``.
    """

    def __init__(
        self,
        loss_fn: Callable[[Tensor], Tensor],
        init: float = 1 / 3,
        lr: float = 1e-3,
        eps: float = 1e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        t_max: int = 1000,
        log_name: str = "loss",
    ) -> None:
        super().__init__()
        self.loss_fn = loss_fn
        self.weights = nn.Parameter(torch.full((2, 1), float(init)))
        self.lr, self.eps, self.weight_decay, self.betas = lr, eps, weight_decay, tuple(betas)
        self.t_max = int(t_max)
        self.log_name = log_name
        self.step_losses: list[Tensor] = []

    @property
    def mask_weights(self) -> list[float]:
        """The three mixing weights ``[1 - w1 - w2, w1, w2]`` (computed as the official code)."""
        w = self.weights.detach()
        return torch.cat((1 - w.sum(0).unsqueeze(0), w), dim=0).flatten().tolist()

    @property
    def losses(self) -> np.ndarray:
        """Loss of every training step so far, (steps,) float32 (before that step's update)."""
        if not self.step_losses:
            return np.zeros(0, dtype=np.float32)
        return torch.stack(self.step_losses).float().cpu().numpy()

    def forward(self) -> Tensor:
        """The loss at the current weights (differentiable w.r.t. ``weights``)."""
        return self.loss_fn(self.weights)

    def loss_and_grad(self) -> tuple[Tensor, Tensor]:
        """The loss (0-d) at the current weights and its gradient (2, 1), no graph kept.

        What ``loss.backward()`` would leave in ``weights.grad``, exactly: a backend that
        computes both is asked directly (the autograd bridge only multiplies its gradient by
        1); ``reference`` goes through autograd."""
        impl = getattr(self.loss_fn, "backend", None)
        w = self.weights.detach()
        if impl is not None:
            return impl(w)
        w.requires_grad_(True)
        loss = self.loss_fn(w)
        (grad,) = torch.autograd.grad(loss, w)
        return loss.detach(), grad

    def record(self, loss: Tensor, step: int) -> None:
        """Keep step ``step``'s loss; raise NonFiniteLossError if it is NaN or infinite."""
        self.step_losses.append(loss.detach())
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"PerSAM-F scale-weight loss is {loss.item()} at step {step} (mask weights "
                f"{self.mask_weights}). The logits are finite, so the weights diverged: lower the "
                "learning rate or check the logits' scale."
            )

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss = self()
        self.record(loss, batch_idx)
        self.log(self.log_name, loss, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
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
    loss at the returned weights; ``fit_seconds`` the wall time of the fit itself (the loop
    and the first expansion), ``compile_seconds`` that of compiling the fused kernel beforehand
    (0 when nothing was compiled, e.g. the Taylor backend or a process that compiled already);
    ``seconds`` the whole call; ``backend`` the implementation actually used (``taylor``,
    ``compile``, ``eager`` or ``reference``; ``taylor+compile`` / ``taylor+eager`` when a Taylor
    fit switched to the direct pass mid-way (its weights walked out of the trust boxes too fast
    or too far, see :mod:`persam.model.fit_backends.taylor`), its compile time then
    counted in ``compile_seconds``); ``expansions`` the Taylor backend's passes over the pixels.
    """

    weights: np.ndarray
    losses: np.ndarray
    seconds: float
    final_loss: float
    fit_seconds: float = math.nan
    compile_seconds: float = 0.0
    backend: str = "taylor"
    expansions: int = 0


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


@contextlib.contextmanager
def _runtime_cuda_check() -> Iterator[None]:
    """Let torch answer "is CUDA available?" from its cached runtime check, where that is safe.

    Importing Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (so that a CUDA check does not
    initialise the driver and poison later forks), and every ``optimizer.step()`` asks that
    question (its graph-capture health check). Where NVML is absent, as on a machine without a
    GPU, the NVML route fails and falls back to the runtime's own check, ~30 us a call against
    ~0.5 us: more than the rest of an AdamW step on two weights. With no CUDA device there is no
    fork to protect, so the variable is lifted for the loop and restored after; with a device,
    it stays.
    """
    name = "PYTORCH_NVML_BASED_CUDA_CHECK"
    value = os.environ.get(name)
    if value is None or torch.cuda.is_available():
        yield
        return
    del os.environ[name]
    try:
        yield
    finally:
        os.environ[name] = value


def fit_plain(
    module: ScaleWeightsModule, steps: int, logger=None, log_every_n_steps: int = 50
) -> None:
    """Train ``module`` for ``steps`` steps as the Trainer's automatic optimisation does, minus
    the Trainer: the same ``configure_optimizers`` (AdamW, the scheduler stepped every step), the
    same order (loss at the current weights, recorded and checked; gradient; optimiser step;
    scheduler step), so the weights and losses are the Trainer's bit for bit
    (``tests/test_scale_weights.py``). The gradient comes from :meth:`ScaleWeightsModule.
    loss_and_grad` (no autograd graph). ``logger`` gets what the Trainer would log: the loss
    as ``module.log_name`` with ``epoch`` 0 at every ``log_every_n_steps``-th step (step index
    counted from 0), ``save()`` after each, ``finalize("success")`` at the end. The module stays
    on its device."""
    config = module.configure_optimizers()
    optimizer = config["optimizer"]
    scheduler = config["lr_scheduler"]["scheduler"]
    weights = module.weights
    with _runtime_cuda_check():
        for step in range(steps):
            loss, grad = module.loss_and_grad()
            module.record(loss, step)
            weights.grad = grad
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            if logger is not None and log_every_n_steps and (step + 1) % log_every_n_steps == 0:
                logger.log_metrics({module.log_name: loss.item(), "epoch": 0}, step=step)
                logger.save()
    if logger is not None:
        logger.finalize("success")


# Over 80 lines: the PerSAM-F fit's one entry point (section 3.2): argument checks, the
# backend (taylor / fused / reference), the loop (plain / trainer: measured ~0.1 ms against
# ~1 ms a step, docs/persam-f.md), the thread setting and its restore, in the order they apply.
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
    backend: Backend = "taylor",
    fused: FusedMode = "compile",
    loop: Loop = "plain",
    trainer: Callable[..., L.Trainer] | None = None,
    logger=None,
    log_every_n_steps: int = 50,
    enable_progress_bar: bool = False,
    quiet: bool = True,
    num_threads: int | None = None,
    accelerator: str = "cpu",
    log_name: str = "loss",
) -> FitResult:
    """Fit the PerSAM-F scale weights (official schedule).

    ``logits`` (3, H, W) float and ``gt`` (H, W) bool (tensors or numpy). AdamW(lr, eps,
    weight_decay) + CosineAnnealingLR(T_max=steps) stepped every step, ``steps`` steps, loss =
    dice + sigmoid focal(alpha, gamma) of the mixed logits, computed by ``backend``
    (``taylor``, ``fused`` or ``reference``; ``fused`` = ``compile`` or ``eager`` says how the
    direct pass runs).

    ``loop``: ``plain`` (:func:`fit_plain`, on the device of ``logits``; ``trainer`` and
    ``accelerator`` unused) or ``trainer``: a ``lightning.Trainer`` from ``trainer``, a factory
    (e.g. ``functools.partial(lightning.Trainer, accelerator=...)`` from the ``trainer`` config
    group, ``_partial_``) that the fit completes with ``max_steps`` and its logger, turning off
    checkpointing and validation (None: ``lightning.Trainer`` on ``accelerator``). Both give
    the same weights and losses and log the same curve. ``logger``: a Lightning logger or None.
    ``num_threads``: ``torch.set_num_threads`` for the fit (None: unchanged). Raises ValueError
    for bad inputs (e.g. an empty ``gt``), NonFiniteLossError if the loss becomes NaN/inf.
    """
    t0 = time.perf_counter()
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    steps = int(steps)
    if loop not in ("plain", "trainer"):
        raise ValueError(f"loop must be 'plain' or 'trainer'; got {loop!r}")
    loss_fn = make_loss(logits, gt, backend, alpha, gamma, fused)
    module = ScaleWeightsModule(
        loss_fn,
        init=init,
        lr=lr,
        eps=eps,
        weight_decay=weight_decay,
        t_max=steps,
        log_name=log_name,
    )
    fit_kwargs = dict(
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
        trainer = functools.partial(L.Trainer, accelerator=accelerator, devices=1)
    threads_before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        if loop == "plain":
            t_start = time.perf_counter()
            if isinstance(logits, Tensor):
                module.to(logits.device)
            compile_seconds = loss_fn.warm_up(module.weights.detach())
            fit_plain(module, steps, logger, log_every_n_steps)
        else:
            loader = torch.utils.data.DataLoader(_Steps(steps), batch_size=None)
            with _quiet_lightning(quiet):
                fit_trainer = trainer(**fit_kwargs)
                t_start = time.perf_counter()
                # Prepare (and compile, if needed) on the device the Trainer will fit on.
                device = fit_trainer.strategy.root_device
                compile_seconds = loss_fn.warm_up(module.weights.detach().to(device))
                fit_trainer.fit(module, train_dataloaders=loader)
        # A Taylor fit that switched to the direct pass compiled it mid-way.
        compile_seconds += getattr(loss_fn.backend, "late_compile_seconds", 0.0)
        fit_seconds = time.perf_counter() - t_start - compile_seconds
        with torch.no_grad():
            final_loss = float(module())
    finally:
        if num_threads is not None:
            torch.set_num_threads(threads_before)
    losses = module.losses
    if len(losses) != steps:
        raise RuntimeError(f"the {loop} loop ran {len(losses)} steps instead of {steps}")
    impl = loss_fn.backend
    if backend == "reference":
        used = "reference"
    elif backend == "taylor" and not impl.direct:
        used = "taylor"
    else:
        used = "eager" if fused == "eager" or not compile_available() else "compile"
        if backend == "taylor" and impl.switched:
            used = f"taylor+{used}"  # switched to the direct pass mid-way
    return FitResult(
        weights=np.asarray(module.mask_weights, dtype=np.float32),
        losses=losses,
        seconds=time.perf_counter() - t0,
        final_loss=final_loss,
        fit_seconds=fit_seconds,
        compile_seconds=compile_seconds,
        backend=used,
        expansions=getattr(impl, "expansions", 0),
    )


# -- scale_weights.json: the fitted weights of a run, reused with method.scale_weights.load --
SCALE_WEIGHTS_FILE = "scale_weights.json"


def write_scale_weights(run_dir: Path, weights: dict[str, list[float]]) -> None:
    """`scale_weights.json`: PerSAM-F's 3 mixing weights per object, `{name: [w0, w1, w2]}`."""
    atomic_write(run_dir / SCALE_WEIGHTS_FILE, lambda f: json.dump(weights, f, indent=2))


def scale_weights_file(path: str | Path) -> Path:
    """`path` itself, or the `scale_weights.json` in it when it is a (run) folder."""
    path = Path(path).expanduser()
    return path / SCALE_WEIGHTS_FILE if path.is_dir() else path


def read_scale_weights(path: str | Path) -> dict[str, list[float]]:
    """The weights of a `scale_weights.json` (the file, or the run folder that holds it)."""
    path = scale_weights_file(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise FileNotFoundError(
            f"method.scale_weights.load={path}: cannot read it ({exc.strerror}); give a "
            f"{SCALE_WEIGHTS_FILE} or the PerSAM-F run folder that holds one"
        ) from exc
    except ValueError as exc:
        raise ValueError(f"method.scale_weights.load={path} is not valid JSON: {exc}") from exc
    bad = (
        [
            k
            for k, v in data.items()
            if not (
                isinstance(v, list) and len(v) == 3 and all(isinstance(x, float | int) for x in v)
            )
        ]
        if isinstance(data, dict)
        else ["<top level>"]
    )
    if bad:
        raise ValueError(
            f"method.scale_weights.load={path}: expected {{object: [w0, w1, w2]}}, bad entries: "
            f"{bad[:5]}"
        )
    return data
