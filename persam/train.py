"""`python -m persam.train` — train the embedded SAM from scratch (a Hydra app, conf/train.yaml).

python -m persam.train                                    # the shipped recipe (~46 min, 2 CPUs)
python -m persam.train train.export_dir=persam/weights    # ... and ship the result
python -m persam.train trainer.max_steps=5 train.batch_size=2 \
    train.data.num_identities=4 train.data.scenes_per_identity=2   # a quick check
python -m persam.train logger=wandb                       # W&B (offline) instead of CSV
python -m persam.train train.init_from=persam/weights/embedded_sam.pth   # continue training

Writes to the run folder: `embedded_sam.pth` (the `Sam` state dict, float32), the record
`embedded_sam.json` / `embedded_sam.md` (command, seed, data, time, losses, git commit) and the
logger's files (`csv/metrics.csv`: every step's losses). Deterministic given `seed`: the scenes
come from seeded numpy Generators, prompts from a Generator seeded by (seed, step), weights from
`seed_everything(seed)`, and the Trainer runs with `deterministic=True`.
"""

from __future__ import annotations

import os

# On a machine shared with other jobs, OpenMP threads that spin while waiting for a descheduled
# sibling waste most of the CPU; passive waiting costs nothing measurable on an idle one. Must
# be set before torch (libgomp) is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import logging
import platform
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import persam  # noqa: F401 - registers the ${persam_weights:...} resolver
from persam.backbone import CheckpointError
from persam.conf import CONFIG_DIR
from persam.training.memory import (
    TrainingMemoryError,
    check_memory,
    is_out_of_memory,
    out_of_memory_error,
)

log = logging.getLogger("persam.train")

CHECKPOINT_NAME = "embedded_sam.pth"
RECORD_FIELDS = ("command", "seed", "architecture", "data", "batch_size", "steps")
NON_ARCHITECTURE = ("_target_", "name", "checkpoint", "seed", "device")


def architecture(backbone: DictConfig) -> dict[str, Any]:
    """The `build_architecture` keyword arguments of a backbone config."""
    fields = OmegaConf.to_container(backbone, resolve=False)
    return {k: v for k, v in fields.items() if k not in NON_ARCHITECTURE}


class History(L.Callback):
    """Keeps every step's logged `train/*` values (for the record)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        row = {
            k.removeprefix("train/"): float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("train/")
        }
        row["step"] = trainer.global_step
        self.rows.append(row)


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in rows[0] if k != "step"] if rows else []
    return {k: round(sum(r[k] for r in rows) / len(rows), 6) for k in keys}


def _git() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit or None, "git_dirty": bool(dirty) if commit else None}


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_markdown(rec: dict[str, Any]) -> str:
    """The human-readable record (`embedded_sam.md`) of a training run."""
    fin, first = rec["final_losses"], rec["first_losses"]
    rows = "\n".join(
        f"| {k} | {first.get(k, float('nan')):.4f} | {v:.4f} |" for k, v in fin.items() if k != "lr"
    )
    arch = "\n".join(f"| `{k}` | `{v}` |" for k, v in rec["architecture"].items())
    data = ", ".join(f"{k}={v}" for k, v in rec["data"].items())
    module = ", ".join(f"{k}={v}" for k, v in rec["module"].items())
    return f"""# embedded_sam.pth — training record

The embedded default SAM of `conf/backbone/embedded.yaml`: `segment_anything`'s modules,
trained from scratch by `python -m persam.train` on procedurally rendered scenes of the
synthetic world's **train** identities (the held-out identities evaluated by
`python -m persam.run` are never seen).

| | |
|---|---|
| command | `{rec["command"]}` |
| seed | {rec["seed"]} |
| git commit | `{rec["git_commit"]}`{" (with uncommitted changes)" if rec["git_dirty"] else ""} |
| date (UTC) | {rec["date"]} |
| machine | {rec["machine"]} |
| torch | {rec["torch"]} |
| started from | {rec.get("init_from") or "random initialisation (seed)"} |
| steps x batch | {rec["steps"]} x {rec["batch_size"]} pairs ({2 * rec["batch_size"]} images, {rec.get("extra_objects", 0)} extra object(s) each) |
| scene rendering | {rec["render_seconds"]:.0f} s |
| training | {rec["fit_seconds"]:.0f} s ({rec["steps_per_second"]:.2f} steps/s) |
| total | {rec["total_seconds"] / 60:.1f} min wall, {rec.get("cpu_seconds", float("nan")) / 60:.1f} min CPU |
| parameters | {rec["parameters"]:,} (float32 state dict, {rec["bytes"] / 2**20:.1f} MiB) |
| sha256 | `{rec["sha256"]}` |

Data: {data}.

Module (losses, prompts, optimiser): {module}.

## Architecture (`build_architecture` fields)

| field | value |
|---|---|
{arch}

## Losses (mean of the first / last {rec["loss_window"]} steps)

| term | first | last |
|---|---|---|
{rows}

`single`/`multi`: focal (x{rec["module"].get("focal_weight")}) + dice of the single-mask output /
best of the three multimask outputs, averaged over the decoder passes (target plus
`extra_weight` x the extra objects); `iou_head`: MSE of the IoU prediction; `identity_bce`/`identity_nce`: the identity-matching losses on the encoder
features; `argmax_hit`: share of scene pairs whose similarity arg-max (PerSAM's positive point)
falls inside the object; `iou_first`/`iou_last`: IoU of the single-mask output at the first /
last decoder pass (target); `iou_other`: the same at the last pass for the extra objects.
"""


def train(cfg: DictConfig) -> dict[str, Any]:
    """Render the scene pool, fit, save the state dict and the record; returns the record."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import TQDMProgressBar
    from torch.utils.data import DataLoader

    from persam.backbone import build_architecture, build_sam, load_checkpoint
    from persam.training.data import DataConfig, PairBatches, render_pool
    from persam.training.module import EmbeddedSamModule

    start = time.perf_counter()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    tcfg = cfg.train
    if tcfg.threads:
        torch.set_num_threads(int(tcfg.threads))
    arch = architecture(cfg.backbone)
    data_cfg = DataConfig(**OmegaConf.to_container(tcfg.data, resolve=True))
    module_kwargs = OmegaConf.to_container(tcfg.module, resolve=True)
    batch_size = int(tcfg.batch_size)
    extra_objects = int(tcfg.get("extra_objects", 0))
    if batch_size < 1:
        raise ValueError(f"train.batch_size must be >= 1, got {batch_size}")

    initial = build_architecture(**arch)
    num_params = sum(p.numel() for p in initial.parameters())
    init_from = tcfg.get("init_from")
    if init_from:
        # continue from a SAM state dict of this architecture (e.g. the shipped one); read
        # before the scene rendering so that a bad file fails at once
        init_from = str(Path(str(init_from)).expanduser().resolve())
        load_checkpoint(initial, init_from, str(cfg.backbone.name))
    need = check_memory(
        arch,
        batch_size,
        int(module_kwargs.get("passes", 3)),
        data_cfg.num_identities * data_cfg.scenes_per_identity,
        num_params,
        float(tcfg.memory_fraction),
        extra_objects=extra_objects,
    )
    log.info(
        "Embedded SAM: %s parameters, estimated peak memory %.2f GiB",
        f"{num_params:,}",
        need / 2**30,
    )

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    pool = render_pool(data_cfg, int(arch["image_size"]), progress=bool(cfg.progress))
    rendered = time.perf_counter()
    data = PairBatches(
        pool,
        batch_size,
        int(arch["image_size"]),
        seed=int(cfg.seed),
        extra_objects=extra_objects,
    )
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module = EmbeddedSamModule(arch, seed=int(cfg.seed), **module_kwargs)
    if init_from:
        module.sam.load_state_dict(initial.state_dict())
        log.info("Starting from the weights of %s", init_from)
    del initial

    logger = instantiate(cfg.logger) if cfg.get("logger") else None
    if logger is not None:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    history = History()
    trainer_kwargs = {
        k: v
        for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
        if not k.startswith("_")
    }
    trainer = instantiate(cfg.trainer)(
        logger=logger if logger is not None else False,
        callbacks=[history, *([TQDMProgressBar(refresh_rate=1)] if cfg.progress else [])],
        enable_progress_bar=bool(cfg.progress),
        enable_checkpointing=False,
        enable_model_summary=False,
        deterministic=True,
        max_epochs=-1,
        num_sanity_val_steps=0,
    )
    try:
        trainer.fit(module, DataLoader(data, batch_size=None, num_workers=0))
    except Exception as exc:
        if is_out_of_memory(exc):
            raise out_of_memory_error(exc, batch_size, arch) from exc
        raise
    fitted = time.perf_counter()

    # save the Sam state dict (float32) and check that it loads through the backbone builder
    path = run_dir / CHECKPOINT_NAME
    state = {k: v.detach().cpu().float().contiguous() for k, v in module.sam.state_dict().items()}
    torch.save(state, path)
    build_sam(name=cfg.backbone.name, checkpoint=path, device="cpu", **arch)

    rows = history.rows
    window = min(50, max(1, len(rows) // 4)) if rows else 0
    overrides = list(HydraConfig.get().overrides.task)
    steps = int(trainer.global_step)
    fit_seconds = fitted - rendered
    rec = {
        "command": " ".join(["python -m persam.train", *overrides]),
        "argv": sys.argv,
        "overrides": overrides,
        "seed": int(cfg.seed),
        "architecture": arch,
        "data": OmegaConf.to_container(tcfg.data, resolve=True),
        "data_split": "train",
        "batch_size": batch_size,
        "extra_objects": extra_objects,
        "init_from": init_from or None,
        "steps": steps,
        "module": module_kwargs,
        "trainer": trainer_kwargs,
        "render_seconds": round(rendered - start, 2),
        "fit_seconds": round(fit_seconds, 2),
        "total_seconds": round(time.perf_counter() - start, 2),
        "steps_per_second": round(steps / max(fit_seconds, 1e-9), 4),
        # CPU time of this process and its rendering workers: wall time on a machine shared
        # with other jobs is longer than cpu_seconds / threads would be on an idle one
        "cpu_seconds": round(_cpu_seconds(), 1),
        "loss_window": window,
        "first_losses": _mean(rows[:window]) if rows else {},
        "final_losses": _mean(rows[-window:]) if rows else {},
        "parameters": num_params,
        "bytes": path.stat().st_size,
        "sha256": _sha256(path),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''} ".strip()
        + f", {torch.get_num_threads()} threads",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        **_git(),
    }
    (run_dir / "embedded_sam.json").write_text(json.dumps(rec, indent=2) + "\n")
    (run_dir / "embedded_sam.md").write_text(record_markdown(rec))
    (run_dir / "history.json").write_text(json.dumps(rows) + "\n")
    log.info(
        "Trained %d steps in %.1f min (rendering %.1f min); final loss %.4f -> %s",
        steps,
        rec["total_seconds"] / 60,
        rec["render_seconds"] / 60,
        rec["final_losses"].get("loss", float("nan")),
        path,
    )
    if tcfg.export_dir:
        export = Path(str(tcfg.export_dir)).expanduser()
        export.mkdir(parents=True, exist_ok=True)
        for name in (CHECKPOINT_NAME, "embedded_sam.json", "embedded_sam.md"):
            shutil.copyfile(run_dir / name, export / name)
        log.info("Exported the checkpoint and its record to %s", export)
    return rec


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        rec = train(cfg)
    except (TrainingMemoryError, CheckpointError) as exc:
        log.error("%s", exc)
        raise SystemExit(2) from exc
    return rec["final_losses"].get("loss")


if __name__ == "__main__":
    main()
