"""The training record of `python -m persam.train`, as a Lightning callback.

`TrainingRecord` keeps every step's logged `train/*` values; when the fit ends it saves the
`Sam` state dict (float32) as `embedded_sam.pth`, checks that it loads through the backbone
builder, writes the record `embedded_sam.json` / `embedded_sam.md` (command, seed, data, time,
losses, git commit) and `history.json`, and copies the checkpoint and its record to
`export_dir` when one is given (`persam/weights` ships them).
"""

from __future__ import annotations

import json
import logging
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch

from persam.backbones.sam import build_sam, checkpoint_record
from persam.data.files import atomic_write, replacing, sha256_file

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "embedded_sam.pth"
RECORD_FILES = (CHECKPOINT_NAME, "embedded_sam.json", "embedded_sam.md")


class TrainingRecord(L.Callback):
    """Record and export of a training run (see the module docstring).

    Args:
      run_dir: where the checkpoint and the record are written (the Hydra run folder).
      export_dir: also copy the checkpoint and its record there (None: don't).
      overrides: the command-line overrides of the run (for the record's command).
      backbone: the backbone config's name (the checkpoint is checked to load as it).
      loss_window: the record's first / final losses are means over this many steps (at
        most a quarter of the run).
    """

    def __init__(
        self,
        run_dir: str | Path,
        export_dir: str | Path | None = None,
        overrides: Sequence[str] = (),
        backbone: str = "embedded",
        loss_window: int = 50,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.export_dir = Path(str(export_dir)).expanduser() if export_dir else None
        self.overrides = [str(o) for o in overrides]
        self.backbone = backbone
        self.loss_window = loss_window
        self.rows: list[dict[str, float]] = []
        self.record: dict[str, Any] = {}
        self._start = time.perf_counter()
        self._fit_start = self._start
        #: the stages behind `train.init_from`'s weights (read when training starts)
        self.previous: list[dict[str, Any]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter()
        # the record of the weights this run continues from (read now: an export may replace it)
        self.previous = previous_chain(pl_module.init_from)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        row = {
            k.removeprefix("train/"): float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("train/")
        }
        row["step"] = trainer.global_step
        self.rows.append(row)

    def on_train_end(self, trainer, pl_module) -> None:
        fit_seconds = time.perf_counter() - self._fit_start
        arch = dict(pl_module.hparams.architecture)
        path = self.run_dir / CHECKPOINT_NAME
        state = {
            k: v.detach().cpu().float().contiguous() for k, v in pl_module.sam.state_dict().items()
        }
        with replacing(path) as tmp:
            torch.save(state, tmp)
        build_sam(name=self.backbone, checkpoint=path, device="cpu", **arch)

        data = trainer.datamodule
        rows = self.rows
        window = min(self.loss_window, max(1, len(rows) // 4)) if rows else 0
        steps = int(trainer.global_step)
        module = {k: v for k, v in pl_module.hparams.items() if k != "architecture"}
        render_seconds = float(getattr(data, "render_seconds", 0.0))
        rec = {
            "command": " ".join(["python -m persam.train", *self.overrides]),
            "argv": sys.argv,
            "overrides": self.overrides,
            "seed": int(pl_module.hparams.seed),
            "architecture": arch,
            "data": dict(data.hparams),
            "data_split": "train",
            "batch_size": int(data.hparams.batch_size),
            "extra_objects": int(data.hparams.extra_objects),
            "init_from": pl_module.init_from,
            "steps": steps,
            "module": module,
            "trainer": {
                "max_steps": trainer.max_steps,
                "accelerator": type(trainer.accelerator).__name__,
                "precision": trainer.precision,
                "gradient_clip_val": trainer.gradient_clip_val,
            },
            "render_seconds": round(render_seconds, 2),
            "fit_seconds": round(fit_seconds, 2),
            "total_seconds": round(time.perf_counter() - self._start, 2),
            "steps_per_second": round(steps / max(fit_seconds, 1e-9), 4),
            # CPU time of this process and its rendering workers: wall time on a machine shared
            # with other jobs is longer than cpu_seconds / threads would be on an idle one
            "cpu_seconds": round(_cpu_seconds(), 1),
            "loss_window": window,
            "first_losses": _mean(rows[:window]) if rows else {},
            "final_losses": _mean(rows[-window:]) if rows else {},
            "parameters": sum(p.numel() for p in pl_module.sam.parameters()),
            "bytes": path.stat().st_size,
            "sha256": sha256_file(path),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {platform.processor() or ''} ".strip()
            + f", {torch.get_num_threads()} threads",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            **_git(),
        }
        rec["chain"] = [*self.previous, chain_stage(rec)]
        self.record = rec
        texts = {
            "embedded_sam.json": json.dumps(rec, indent=2) + "\n",
            "embedded_sam.md": record_markdown(rec),
            "history.json": json.dumps(rows) + "\n",
        }
        for name, text in texts.items():
            atomic_write(self.run_dir / name, lambda f, text=text: f.write(text))
        log.info(
            "Trained %d steps in %.1f min (rendering %.1f min); final loss %.4f -> %s",
            steps,
            rec["total_seconds"] / 60,
            rec["render_seconds"] / 60,
            rec["final_losses"].get("loss", float("nan")),
            path,
        )
        if self.export_dir is not None:
            for name in RECORD_FILES:
                blob = (self.run_dir / name).read_bytes()
                atomic_write(self.export_dir / name, lambda f, blob=blob: f.write(blob), True)
            log.info("Exported the checkpoint and its record to %s", self.export_dir)


def previous_chain(init_from: str | None) -> list[dict[str, Any]]:
    """The training stages behind the weights `init_from`, from the record beside them
    (`embedded_sam.json`); [] for a random start or weights without a record."""
    if not init_from:
        return []
    _, prev = checkpoint_record(Path(init_from))
    if prev is None:  # none, unreadable, or another file's (the last two with a warning)
        log.warning("No training record beside %s: the record's chain starts here", init_from)
        return []
    return list(prev["chain"]) if "chain" in prev else [chain_stage(prev)]


def chain_stage(rec: dict[str, Any]) -> dict[str, Any]:
    """A training record's entry in the chain of stages (records written before the chain
    existed included: their multimask loss was SAM's min over three)."""
    keys = ("command", "init_from", "steps", "total_seconds", "cpu_seconds", "sha256")
    stage = {k: rec[k] for k in (*keys, "git_commit", "date") if k in rec}
    stage["multimask"] = rec.get("module", {}).get("multimask", "min")
    return stage


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in rows[0] if k != "step"] if rows else []
    return {k: round(sum(r[k] for r in rows) / len(rows), 6) for k in keys}


def _git() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]  # the repository of a checkout
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


def record_markdown(rec: dict[str, Any]) -> str:
    """The human-readable record (`embedded_sam.md`) of a training run."""
    fin, first = rec["final_losses"], rec["first_losses"]
    rows = "\n".join(
        f"| {k} | {first.get(k, float('nan')):.4f} | {v:.4f} |" for k, v in fin.items() if k != "lr"
    )
    arch = "\n".join(f"| `{k}` | `{v}` |" for k, v in rec["architecture"].items())
    data = ", ".join(f"{k}={v}" for k, v in rec["data"].items())
    module = ", ".join(f"{k}={v}" for k, v in rec["module"].items())
    chain = rec.get("chain") or []
    stages = "\n".join(
        f"| {i + 1} | `{c.get('command', '?')}` | {c.get('multimask', 'min')} | {c.get('steps', '?')} "
        f"| {c.get('total_seconds', float('nan')) / 60:.1f} | "
        f"{c.get('cpu_seconds', float('nan')) / 60:.1f} | `{str(c.get('sha256', ''))[:12]}` |"
        for i, c in enumerate(chain)
    )
    wall = sum(c.get("total_seconds", 0.0) for c in chain) / 60
    cpu = sum(c.get("cpu_seconds", 0.0) for c in chain) / 60
    chain_md = (
        f"""
## Training chain ({len(chain)} stage(s), {wall:.1f} min wall, {cpu:.1f} min CPU in all)

Each stage starts from the weights the previous one wrote (`train.init_from`).

| stage | command | multimask | steps | wall (min) | CPU (min) | sha256 |
|---|---|---|---:|---:|---:|---|
{stages}
"""
        if len(chain) > 1
        else ""
    )
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
{chain_md}
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
