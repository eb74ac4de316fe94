"""Experiment loggers: any Lightning logger built from the `logger` config group, or none.

`conf/logger/*.yaml` are Lightning loggers (`WandbLogger`, offline by default, or `CSVLogger`)
built by `instantiate`; the W&B group and run name come from the config (`${persam_sweep:}`,
`${persam_job:}`), not from code. `RunLogger` gives a run one small interface over whichever
was chosen: per-unit results as a table, the run-level metrics in the summary, a few images.
Loggers that can store tables and images (those with `log_table` / `log_image`, e.g. W&B) get
them; the others get the numbers as metrics. The PerSAM-F fit passes the same Lightning logger
to its Trainer, so loss curves land in the same run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class RunLogger:
    """Routes run-level results to a Lightning logger (or nowhere)."""

    def __init__(self, logger=None, max_images: int = 6) -> None:
        self.logger = logger
        self.max_images = max_images
        self.images: list[tuple[str, Path]] = []

    def hyperparams(self, cfg: DictConfig) -> None:
        if self.logger is not None:
            self.logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))

    def image(self, caption: str, path: Path) -> None:
        if len(self.images) < self.max_images:
            self.images.append((caption, path))

    def finish(
        self,
        summary: dict,
        unit_key: str,
        columns: list[str],
        fine_rows: tuple[str, list[dict]] | None = None,
    ) -> None:
        """Log the units of `summary[unit_key]` as a table and its top-level numbers.

        `fine_rows` = (key, rows): a second table (e.g. one row per object of every video
        sequence). Animated overlays (.gif, .mp4) go to the logger as videos."""
        if self.logger is None:
            return
        units = summary.get(unit_key, {})
        metrics = {
            k: float(v)
            for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        used = [c for c in columns[1:] if any(c in r for r in units.values())]
        extra = sorted({k for r in units.values() for k in r if k in _TABLE_EXTRAS})
        header = [columns[0], *used, *extra]
        rows = [[name] + [_cell(r.get(c)) for c in header[1:]] for name, r in units.items()]
        if hasattr(self.logger, "log_table"):
            self.logger.log_table(key=unit_key, columns=header, data=rows)
            self.logger.experiment.summary.update(metrics)
            if fine_rows is not None and fine_rows[1]:
                key, table = fine_rows
                fields = list(dict.fromkeys(k for row in table for k in row))
                data = [[_cell(row.get(k)) for k in fields] for row in table]
                self.logger.log_table(key=key, columns=fields, data=data)
            stills = [(c, p) for c, p in self.images if Path(p).suffix not in _VIDEO_SUFFIXES]
            videos = [(c, p) for c, p in self.images if Path(p).suffix in _VIDEO_SUFFIXES]
            if stills and hasattr(self.logger, "log_image"):
                self.logger.log_image(
                    key="overlays",
                    images=[str(p) for _, p in stills],
                    caption=[c for c, _ in stills],
                )
            if videos and hasattr(self.logger, "log_video"):
                self.logger.log_video(
                    key="overlays",
                    videos=[str(p) for _, p in videos],
                    caption=[c for c, _ in videos],
                    format=[Path(p).suffix[1:] for _, p in videos],
                )
        else:
            for step, (name, result) in enumerate(units.items()):
                numbers = {
                    f"{name}/{k}": float(v)
                    for k, v in result.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                }
                self.logger.log_metrics(numbers, step=step)
            self.logger.log_metrics(metrics, step=len(units))
        self.logger.save()
        self.logger.finalize("success" if summary.get("n_failed", 0) == 0 else "failed")


_VIDEO_SUFFIXES = (".gif", ".mp4")

# Per-unit fields shown in the table besides the task's columns (PerSAM-F's fit results).
_TABLE_EXTRAS = ("mask_weights", "fit_seconds")


def _cell(value: Any):
    if isinstance(value, list):
        return str([round(v, 6) if isinstance(v, float) else v for v in value])
    return value
