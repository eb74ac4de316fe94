"""`python -m persam.run` — run PerSAM or PerSAM-F over a dataset (a Hydra app over conf/).

python -m persam.run method=persam_f data=perseg data.root=/data/PerSeg backbone=vit_h
python -m persam.run -m method=persam,persam_f          # both methods, side by side
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting cost the PerSAM-F fit 3-5x on a busy machine; must be
# set before torch is imported. Export OMP_WAIT_POLICY=ACTIVE to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging  # noqa: E402
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from persam.backbone import CheckpointError
from persam.cache import EmbeddingCache
from persam.encoder import Encoder
from persam.evaluate import evaluate
from persam.loggers import RunLogger, build_logger
from persam.preflight import PreflightError, check_device, claim_run_dir, resume_argv
from persam.schema import ConfigError, check_config, check_overrides

log = logging.getLogger("persam.run")

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")

# The backbone of the previous job, reused by the next one when its config is the same
# (jobs of a sweep run one after another in one process with Hydra's basic launcher).
_BACKBONE: dict[str, object] = {}


def build_backbone(cfg: DictConfig):
    key = OmegaConf.to_yaml(cfg.backbone, resolve=True)
    if key not in _BACKBONE:
        _BACKBONE.clear()
        _BACKBONE[key] = instantiate(cfg.backbone)
    return _BACKBONE[key]


def _job_names() -> tuple[str | None, str, bool]:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    group = Path(hc.sweep.dir).name if multirun else None
    name = hc.job.override_dirname or hc.job.name
    return group, name, multirun


def build_method(cfg: DictConfig):
    """Instantiate `cfg.method`; an unknown field is reported with the fields that exist."""
    try:
        return instantiate(cfg.method)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, TypeError) and "unexpected keyword" in str(cause):
            import inspect

            target = hydra.utils.get_class(cfg.method._target_)
            fields = [p for p in inspect.signature(target).parameters if p != "self"]
            log.error(
                "method '%s' has no such component (%s). Its fields are: %s.",
                cfg.method.name,
                cause,
                ", ".join(fields),
            )
            raise SystemExit(2) from exc
        raise


def preflight(cfg: DictConfig, run_dir: Path) -> bool:
    """Config values, GPU, run folder: stop once, before any work; records the config.

    Returns True when an interrupted run in `run_dir` is continued (resume=true).
    """
    hc = HydraConfig.get()
    try:
        check_overrides(list(hc.overrides.task))
        check_config(cfg)
        check_device(cfg)
        return claim_run_dir(run_dir, cfg, hc)
    except (ConfigError, PreflightError) as exc:
        log.error("%s", exc)
        raise SystemExit(2) from exc


def run(cfg: DictConfig) -> dict:
    """Compose -> instantiate -> evaluate; returns the metrics summary."""
    torch.manual_seed(cfg.seed)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    group, name, multirun = _job_names()
    preflight(cfg, run_dir)

    try:
        sam = build_backbone(cfg)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, CheckpointError):
            log.error("%s", exc.__cause__)
            raise SystemExit(2) from exc
        raise
    random_weights = cfg.backbone.get("checkpoint") is None
    cache = EmbeddingCache(cfg.cache.dir, enabled=cfg.cache.enabled)
    method = build_method(cfg).bind(sam, Encoder(sam, cache))
    if cfg.method.get("scale_weights") is not None:
        method.trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    dataset = instantiate(cfg.data)
    run_logger = RunLogger(build_logger(cfg.get("logger"), group, name), cfg.max_logged_images)
    run_logger.hyperparams(cfg)

    summary = evaluate(
        method,
        dataset,
        run_dir,
        run_logger,
        overlays=cfg.overlays,
        progress=cfg.progress,
        extra={
            "backbone": cfg.backbone.name,
            "random_weights": random_weights,
            "overrides": list(HydraConfig.get().overrides.task),
        },
    )
    summary["cache"] = cache.stats.as_dict()
    from persam.outputs import write_metrics

    write_metrics(run_dir, summary)
    log.info("Embedding cache: %d hits, %d misses", cache.stats.hits, cache.stats.misses)
    fmt = lambda v: "n/a" if v is None else f"{100 * v:.2f}"  # noqa: E731
    log.info(
        "%s on %d objects: mIoU %s  mBIoU %s  mAcc %s  (%d failed) -> %s",
        method.name,
        summary["n_objects"],
        fmt(summary["miou"]),
        fmt(summary["mbiou"]),
        fmt(summary["macc"]),
        summary["n_failed"],
        run_dir,
    )
    if random_weights:
        log.warning(
            "WARNING: backbone '%s' has RANDOM weights (backbone.checkpoint=null): the masks and "
            "metrics above are meaningless as segmentations. Pass a SAM checkpoint, e.g. "
            "backbone=vit_h backbone.checkpoint=/path/to/sam_vit_h_4b8939.pth.",
            cfg.backbone.name,
        )
    if summary["n_failed"]:
        log.error(
            "Failed objects: %s (see metrics.json for the errors)", ", ".join(summary["failed"])
        )
        if cfg.strict and not multirun:
            raise SystemExit(1)
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        summary = run(cfg)
    except KeyboardInterrupt:
        run_dir = HydraConfig.get().runtime.output_dir
        log.error(
            "Interrupted: %s keeps the finished objects (metrics.json marked incomplete); "
            "finish with: python -m persam.run resume=true hydra.run.dir=%s",
            run_dir,
            run_dir,
        )
        logging.shutdown()
        raise SystemExit(130) from None
    return summary["miou"]


def cli() -> None:
    """`python -m persam.run` / `persam-run`: `resume=true hydra.run.dir=DIR` reuses DIR's overrides."""
    sys.argv[1:] = resume_argv(sys.argv[1:])
    main()


if __name__ == "__main__":
    sys.exit(cli())
