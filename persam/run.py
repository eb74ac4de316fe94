"""`python -m persam.run` — run PerSAM or PerSAM-F over a dataset (a Hydra app over conf/).

python -m persam.run method=persam_f data=perseg data.root=/data/PerSeg backbone=vit_h
python -m persam.run -m method=persam,persam_f          # both methods, side by side

Compose -> instantiate (backbone, cache, method, data, logger) -> run the dataset's task with
the runner (`persam.tasks.runner`) -> return the run's main metric.
"""

from __future__ import annotations

import persam.app.entry  # noqa: F401 - first: the thread policy, before torch is loaded

# isort: split

import functools  # noqa: E402
import logging
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from persam.app.entry import build
from persam.app.preflight import (
    PreflightError,
    check_dependencies,
    check_device,
    claim_run_dir,
    refuse,
    resume_argv,
    warn_model_reach,
)
from persam.app.schema import ConfigError, check_config, check_overrides
from persam.backbones.sam import BackboneError, is_random
from persam.conf import CONFIG_DIR
from persam.model.encoder import Encoder
from persam.tasks.loggers import RunLogger
from persam.tasks.runner import RunInterrupted, Runner

log = logging.getLogger("persam.run")


# The backbone of the previous job, reused by the next one when its config is the same
# (jobs of a sweep run one after another in one process with Hydra's basic launcher).
_BACKBONE: dict[str, object] = {}


def build_backbone(cfg: DictConfig):
    """The SAM of `cfg.backbone` (reused from the previous job when identical)."""
    key = OmegaConf.to_yaml(cfg.backbone, resolve=True)
    if key not in _BACKBONE:
        _BACKBONE.clear()
        _BACKBONE[key] = build(cfg.backbone, refuse=(BackboneError,))
    return _BACKBONE[key]


def takes_features(cfg: DictConfig) -> bool:
    """Whether `cfg.method` receives the root `features` group's encoder: its class takes a
    `features` argument that its own config does not set (GF-SAM)."""
    import inspect

    if "features" in cfg.method:
        return False
    try:
        cls = hydra.utils.get_class(cfg.method._target_)
    except Exception:  # noqa: BLE001 - building the method reports a bad target itself
        return False
    return "features" in inspect.signature(cls).parameters


def build_features(cfg: DictConfig, encoder: Encoder, cache):
    """The root `features` group's encoder (`conf/features/`) for a method that takes one (else
    None): SAM's own embedding through the method's `encoder`, or DINOv2 through the embedding
    `cache`. A bad checkpoint or a missing package is one line and exit 2. A method that takes
    no features with features other than sam is refused."""
    node = cfg.get("features")
    if node is None or not takes_features(cfg):
        return None
    return features_from(node, encoder, cache)


def features_from(node: DictConfig, encoder: Encoder, cache):
    """A `features` group node -> its encoder: SAM's own embedding through `encoder`, DINOv2
    through the embedding `cache` (errors as `build_features`)."""
    target = str(node.get("_target_", ""))
    if target.startswith("persam.backbones.dinov2"):
        return build(node, refuse=(BackboneError, ValueError), label="features", cache=cache)
    features = build(node, refuse=(BackboneError, ValueError), label="features")
    return features(encoder=encoder) if isinstance(features, functools.partial) else features


def check_features(cfg: DictConfig, runs: tuple[str, ...] = ()) -> None:
    """Refuse features other than sam for a method that does not take the features group, and
    for PerSAM / PerSAM-F in videos (the video segmenter tracks on SAM's similarity maps; GF-SAM
    segments each frame on its own features)."""
    node = cfg.get("features")
    name = None if node is None else node.get("name")
    if name in (None, "sam"):
        return
    if not takes_features(cfg):
        raise ConfigError(
            f"method '{cfg.method.name}' does not take the features group (features="
            f"{name}): leave features=sam, or use method=gf_sam."
        )
    if "persam.tasks.video.task.VideoTask" in runs and not cfg.method._target_.endswith(".GFSAM"):
        raise ConfigError(
            f"persam.video runs method '{cfg.method.name}' on SAM's features only (features="
            f"{name} given): leave features=sam, or use method=gf_sam."
        )


def build_method(cfg: DictConfig, **runtime):
    """`cfg.method` with its backbone, encoder and trainer factory (`runtime`); an unknown field
    is reported with the fields that exist."""

    def describe(cause: BaseException) -> str:
        if not isinstance(cause, TypeError):  # a bad value (method.instances=0, ...): say which
            return str(cause)
        from dataclasses import fields

        options = getattr(hydra.utils.get_class(cfg.method._target_), "Options", None)
        names = ", ".join(f.name for f in fields(options)) if options else ""
        unknown = str(cause).split(": the fields are")[0]
        return f"has no such component ({unknown}). Its fields are: {names}."

    return build(
        cfg.method,
        refuse=(TypeError, ValueError),
        label=f"method '{cfg.method.name}'",
        describe=describe,
        **runtime,
    )


def trainer_factory(node: DictConfig):
    """The `trainer` group's factory (a `lightning.Trainer` `_partial_`), instantiated at its first
    call: a run that never fits with it (PerSAM, GF-SAM, PerSAM-F's plain loop) does not import
    Lightning (seconds at every start)."""

    def make(**kwargs):
        return instantiate(node)(**kwargs)

    return make


def build_dataset(cfg: DictConfig):
    """`cfg.data` without its `task` entry; a bad dataset (`DataError`: a missing file, a bad
    field) stops with its message, which names the file or field and the fix."""
    from persam.data import data_node
    from persam.data.perseg import DataError

    return build(data_node(cfg.data), refuse=(DataError,))


#: The entry point that runs each task, for the message when a dataset reaches the wrong one.
TASK_ENTRY = {
    "persam.tasks.objects.ObjectTask": "python -m persam.run",
    "persam.tasks.episodes.EpisodeTask": "python -m persam.run",
    "persam.tasks.video.task.VideoTask": "python -m persam.video",
}


def check_task(cfg: DictConfig, runs: tuple[str, ...], entry: str) -> None:
    """Refuse, in one line, a dataset whose task (`cfg.data.task`) this entry point does not
    run, naming the entry point that does."""
    task = cfg.data.get("task")
    target = task.get("_target_") if task is not None else None
    if target in runs:
        return
    choice = HydraConfig.get().runtime.choices.get("data", "?")
    other = TASK_ENTRY.get(target)
    hint = f"run it with `{other} data={choice}`" if other else "its config names no `task`"
    raise ConfigError(f"data={choice} is not a dataset {entry} runs: {hint}.")


def preflight(cfg: DictConfig, run_dir: Path, runs: tuple[str, ...], entry: str) -> bool:
    """Config values, the dataset's task, GPU, optional packages, run folder
    (persam/app/preflight.py): stop once, before any work and before anything is written (the
    refusal goes to the console only), then record the config in `run_dir/.hydra`. True when an
    interrupted run there is continued."""
    hc = HydraConfig.get()
    try:
        check_overrides(list(hc.overrides.task))
        check_task(cfg, runs, entry)
        check_config(cfg)
        check_features(cfg, runs)
        check_device(cfg)
        check_dependencies(cfg)
        return claim_run_dir(run_dir, cfg, hc)
    except (ConfigError, PreflightError) as exc:
        refuse(log, str(exc))
        raise SystemExit(2) from None


IMAGE_TASKS = ("persam.tasks.objects.ObjectTask", "persam.tasks.episodes.EpisodeTask")


# Over 80 lines: compose -> preflight -> build -> run -> summarise, the whole run in reading
# order; each step is a call, the length is the summary's log lines.
def run(
    cfg: DictConfig,
    task_options: dict | None = None,
    runs: tuple[str, ...] = IMAGE_TASKS,
    entry: str = "python -m persam.run",
) -> dict:
    """Compose -> instantiate -> run the dataset's task; returns the metrics summary.

    `task_options`: extra keyword arguments of the task (e.g. the video policy); `runs`: the
    task classes this entry point runs (`cfg.data.task`), `entry` its name for messages."""
    torch.manual_seed(cfg.seed)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    preflight(cfg, run_dir, runs, entry)

    sam = build_backbone(cfg)
    warn_model_reach(cfg, sam)
    random_weights = is_random(cfg.backbone.get("checkpoint"))
    cache = instantiate(cfg.cache)
    encoder = Encoder(sam, cache)
    features = build_features(cfg, encoder, cache)
    method = build_method(
        cfg,
        sam=sam,
        encoder=encoder,
        trainer=trainer_factory(cfg.trainer),
        **({} if features is None else {"features": features}),
    )
    dataset = build_dataset(cfg)
    run_logger = RunLogger(
        instantiate(cfg.logger) if cfg.get("logger") else None, cfg.max_logged_images
    )
    run_logger.hyperparams(cfg)
    task = instantiate(cfg.data.task)(
        method=method,
        dataset=dataset,
        run_dir=run_dir,
        run_logger=run_logger,
        overlays=cfg.overlays,
        **(task_options or {}),
    )
    runner = Runner(
        run_dir,
        run_logger,
        resume=cfg.resume,
        progress=cfg.progress,
        extra={
            "backbone": cfg.backbone.name,
            "random_weights": random_weights,
            "overrides": list(HydraConfig.get().overrides.task),
        },
        live=lambda: {"cache": cache.stats.as_dict()},
    )
    try:
        summary = runner.run(task)
    except RunInterrupted as exc:
        log.error("Interrupted: %s. Finish it with resume=true hydra.run.dir=%s", exc, run_dir)
        raise SystemExit(130) from None

    log.info("Embedding cache: %d hits, %d misses", cache.stats.hits, cache.stats.misses)
    fmt = lambda v: "n/a" if v is None else f"{100 * v:.2f}"  # noqa: E731
    log.info(
        "%s on %d %s: %s  (%d failed) -> %s",
        method.name,
        len(summary["expected"]),
        task.unit_key,
        "  ".join(
            f"{k} {fmt(summary[k])}"
            for k in ("miou", "mbiou", "macc", "fbiou", "jf")
            if k in summary
        ),
        summary["n_failed"],
        run_dir,
    )
    if random_weights:
        log.warning(
            "WARNING: backbone '%s' has RANDOM weights (backbone.checkpoint=random): the masks and "
            "metrics above are meaningless as segmentations. Pass a SAM checkpoint, e.g. "
            "backbone=vit_h backbone.checkpoint=/path/to/sam_vit_h_4b8939.pth.",
            cfg.backbone.name,
        )
    if summary["n_failed"]:
        log.error(
            "Failed %s: %s (see metrics.json for the errors)",
            task.unit_key,
            ", ".join(summary["failed"]),
        )
        if cfg.strict and not multirun:
            raise SystemExit(1)
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        summary = run(cfg)
    except KeyboardInterrupt:  # outside the runner's loop (it handles its own): one line
        run_dir = HydraConfig.get().runtime.output_dir
        log.error(
            "Interrupted (Ctrl-C) outside the run's loop; whatever was finished is in %s "
            "(resume=true hydra.run.dir=%s continues it)",
            run_dir,
            run_dir,
        )
        raise SystemExit(130) from None
    return summary.get("miou")


def cli() -> None:
    """`python -m persam.run` / `persam-run`; `resume=true hydra.run.dir=DIR` alone continues
    the run recorded in DIR with its own overrides (`persam.app.preflight.resume_argv`)."""
    sys.argv[1:] = resume_argv(sys.argv[1:])
    main()


if __name__ == "__main__":
    sys.exit(cli())
