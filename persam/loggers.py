"""Experiment loggers: Lightning's `WandbLogger` (offline by default) or `CSVLogger`, or none.

`RunLogger` gives the evaluation loop one small interface over them: per-object results as a
table, the means in the run summary, a few overlays as images. The PerSAM-F fit passes the
underlying Lightning logger to its Trainer, so loss curves land in the same run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def build_logger(cfg: DictConfig | None, group: str | None = None, name: str | None = None):
    """Instantiate the `logger` config (None for `logger=none`)."""
    if cfg is None or not cfg.get("_target_"):
        return None
    extra: dict[str, Any] = {}
    if "Wandb" in cfg._target_:
        if group:
            extra["group"] = group
        if name:
            extra["name"] = name
    return instantiate(cfg, **extra)


class RunLogger:
    """Routes run-level results to a Lightning logger (or nowhere)."""

    def __init__(self, logger=None, max_images: int = 6) -> None:
        self.logger = logger
        self.max_images = max_images
        self.images: list[tuple[str, Path]] = []

    @property
    def is_wandb(self) -> bool:
        return self.logger is not None and type(self.logger).__name__ == "WandbLogger"

    def hyperparams(self, cfg: DictConfig) -> None:
        if self.logger is not None:
            self.logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))

    def image(self, caption: str, path: Path) -> None:
        if len(self.images) < self.max_images:
            self.images.append((caption, path))

    def finish(self, summary: dict, columns: list[str]) -> None:
        if self.logger is None:
            return
        means = {k: summary[k] for k in ("miou", "mbiou", "macc") if summary.get(k) is not None}
        rows = [
            [name] + [_cell(r.get(c)) for c in columns[1:]]
            for name, r in summary["objects"].items()
        ]
        if self.is_wandb:
            self.logger.log_table(key="objects", columns=columns, data=rows)
            self.logger.experiment.summary.update(means)
            if self.images:
                self.logger.log_image(
                    key="overlays",
                    images=[str(p) for _, p in self.images],
                    caption=[c for c, _ in self.images],
                )
        else:
            for step, (name, result) in enumerate(summary["objects"].items()):
                numbers = {
                    f"{name}/{k}": float(v)
                    for k, v in result.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                }
                self.logger.log_metrics(numbers, step=step)
            self.logger.log_metrics(means, step=len(summary["objects"]))
        self.logger.save()
        self.logger.finalize("success" if summary.get("n_failed", 0) == 0 else "failed")


def _cell(value):
    if isinstance(value, list):
        return str([round(v, 6) if isinstance(v, float) else v for v in value])
    return value
