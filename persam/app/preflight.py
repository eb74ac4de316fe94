"""Checks made before a run does any work, so that a mistake stops it once and early.

- `check_device`: a GPU asked for (`backbone.device=cuda`, `trainer=gpu`) on a machine without
  one stops with the override to use.
- `claim_run_dir`: the run folder. Without `resume`, a folder that already holds a run's
  `metrics.json` is refused (naming it and the ways on) before anything is written there. With
  `resume=true`, the configuration must equal the one recorded in the folder's
  `.hydra/config.yaml`, except for the keys of `IGNORED_KEYS` (they change how a run is shown
  or stored, not its results). Then the folder's `.hydra/` is (re)written: persam.run sets
  `hydra.output_subdir: null` so that Hydra does not overwrite the recorded config first.
- `resume_argv`: `python -m persam.run resume=true hydra.run.dir=FOLDER` continues the run
  recorded in FOLDER with its own overrides (those in `FOLDER/.hydra/overrides.yaml` not given
  again on the command line), so a sweep job resumes with the command line shown by the report.
- `check_dependencies`: the optional packages the chosen backbone and dataset need (MobileSAM,
  the Hugging Face SAM, EfficientViT-SAM, SAM 2, pycocotools for COCO-20i / LVIS-92i) are
  imported before any work; a missing one stops the run in one line naming
  `pip install 'persam[<extra>]'`.
- `refuse`: how a refusal made before any work is said: one line on the console, and nothing in
  the run folder (its `run.log` is opened on the first record it keeps; conf/hydra/default.yaml).
- `warn_model_reach`: the embedded SAM (trained on the synthetic world alone) on other data says
  once what its numbers there mean and how to use a real SAM checkpoint instead.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from persam.backbones.sam import OFFICIAL_CHECKPOINTS, is_random, synthetic_world_model

log = logging.getLogger(__name__)

# Top-level keys whose value does not change a run's results (compared on resume: all others).
IGNORED_KEYS = ("resume", "progress", "strict", "logger", "max_logged_images", "cache")


class PreflightError(RuntimeError):
    """A run cannot start as configured; the message says what to do."""


# -- device -----------------------------------------------------------------------------------
def check_device(cfg: DictConfig) -> None:
    """Stop when the config asks for a CUDA GPU that this machine does not have."""
    problems = []
    device = str(OmegaConf.select(cfg, "backbone.device", default="auto") or "auto")
    if device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if not torch.cuda.is_available():
            problems.append(f"backbone.device={device} (use backbone.device=cpu or auto)")
        elif index >= torch.cuda.device_count():
            problems.append(
                f"backbone.device={device}, but only {torch.cuda.device_count()} GPU(s) "
                f"(use backbone.device=cuda:0 or auto)"
            )
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu") or "cpu")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        problems.append(f"trainer.accelerator={accelerator} (use trainer=cpu)")
    if problems:
        raise PreflightError(
            "A GPU was asked for but this machine has none (torch.cuda.is_available() is "
            f"False): {'; '.join(problems)}. Nothing was run."
        )


# -- optional dependencies ----------------------------------------------------------------------
class MissingExtraError(PreflightError):
    """An optional dependency of the configured run is not importable."""


def require_extra(module: str, extra: str, who: str):
    """Import `module`, or a `MissingExtraError` (one line) naming `pip install 'persam[<extra>]'`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MissingExtraError(
            f"{who} needs the optional package '{module.split('.')[0]}', which cannot be "
            f"imported ({reason}). Install it with: pip install 'persam[{extra}]'. Nothing was run."
        ) from None


def _backbone_imports(target: str, name: str) -> None:
    """Import what the backbone `target` builds with, as its builder does."""
    from persam.backbones.sam import MissingDependencyError

    who = f"backbone={name}"
    try:
        if target.startswith("persam.backbones.mobile_sam."):
            from persam.backbones.mobile_sam import tiny_vit_class

            tiny_vit_class()  # timm and mobile_sam, timm's model registry kept as it was
        elif target.startswith("persam.backbones.hf_sam."):
            require_extra("transformers.models.sam.modeling_sam", "hf-sam", who)
        elif target.startswith("persam.backbones.efficientvit_sam."):
            require_extra("efficientsam.models.efficientvit.sam", "efficientvit-sam", who)
        elif target.startswith("persam.backbones.sam2."):
            from persam.backbones.sam2 import import_sam2

            import_sam2("sam2.modeling.sam2_base", name)
    except MissingDependencyError as exc:  # the builders' own check (same extra, same words)
        raise MissingExtraError(f"{str(exc).splitlines()[0]}. Nothing was run.") from None


#: Datasets that read COCO-format masks with pycocotools (extra `fewshot`).
COCO_DATASETS = ("persam.data.fewshot.COCO20iDataset", "persam.data.fewshot.LVIS92iDataset")


def check_dependencies(cfg: DictConfig) -> None:
    """Import the optional packages the configured backbone and dataset need, before any work:
    a missing one is a `MissingExtraError` naming the extra to install."""
    backbone = OmegaConf.select(cfg, "backbone._target_", default=None)
    if backbone:
        name = str(OmegaConf.select(cfg, "backbone.name", default=backbone) or backbone)
        _backbone_imports(str(backbone), name)
    features = str(OmegaConf.select(cfg, "features._target_", default="") or "")
    if features.startswith("persam.backbones.dinov2"):
        require_extra("timm.layers", "dinov2", "features=dinov2")
    data = str(OmegaConf.select(cfg, "data._target_", default="") or "")
    layout = str(OmegaConf.select(cfg, "data.layout", default="") or "")
    coco = data in COCO_DATASETS or (
        data == "persam.data.fewshot_synthetic.synthetic_fewshot" and layout != "fss1000"
    )
    if coco:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
        require_extra("pycocotools.mask", "fewshot", f"data={choices.get('data') or data}")


# -- refusals -----------------------------------------------------------------------------------
def refuse(logger: logging.Logger, message: str) -> None:
    """Log a refusal made before any work (ERROR) to the console only: a run folder's log file
    that is not open yet (Hydra's file handler with `delay: true`) is not created for it, so a
    refused run leaves nothing in its folder. Handlers that are already writing get it too."""
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, None, None)
    handlers = []
    node: logging.Logger | None = logger
    while node is not None:
        handlers += node.handlers
        node = node.parent if node.propagate else None
    for handler in handlers:
        if isinstance(handler, logging.FileHandler) and handler.stream is None:
            continue  # not opened yet: opening it would create the file
        if record.levelno >= handler.level:
            handler.handle(record)


# -- the embedded model's reach -----------------------------------------------------------------
# Datasets drawn from the synthetic world (`persam.data.synthetic` and the layouts built on it).
SYNTHETIC_DATA = (
    "persam.data.synthetic.",
    "persam.data.synthetic_video.",
    "persam.data.fewshot_synthetic.",
)
# What the shipped embedded model scores on real images (update with the shipped model; the
# measurement is in experiments/embedded/RESULTS.md).
EMBEDDED_ON_REAL = (
    "about 25.5 mIoU (PerSAM) on three real PerSeg objects: cat, colorful_sneaker and duck_toy"
)


def warn_model_reach(cfg: DictConfig, sam: torch.nn.Module) -> bool:
    """Warn (once per run, True) when a model trained on the synthetic world alone (the
    embedded SAM) runs on other data: its numbers there measure the framework, not PerSAM."""
    target = str(OmegaConf.select(cfg, "data._target_", default="") or "")
    if target.startswith(SYNTHETIC_DATA) or is_random(cfg.backbone.get("checkpoint")):
        return False
    backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
    if not synthetic_world_model(sam, str(backbone.get("name")), backbone):
        return False
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    data = choices.get("data") or target
    log.warning(
        "The embedded SAM (backbone=%s, %s) was trained on the synthetic world only: on "
        "data=%s its masks and metrics measure this framework, not PerSAM (it scores %s). For "
        "PerSAM's numbers use a real SAM checkpoint: backbone=vit_h "
        "backbone.checkpoint=PATH/sam_vit_h_4b8939.pth (download: %s).",
        backbone.get("name"),
        backbone.get("checkpoint"),
        data,
        EMBEDDED_ON_REAL,
        OFFICIAL_CHECKPOINTS["vit_h"],
    )
    return True


# -- run folder -------------------------------------------------------------------------------
def _flatten(node, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _comparable(cfg: DictConfig) -> dict[str, object]:
    container = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    assert isinstance(container, dict)
    for key in IGNORED_KEYS:
        container.pop(key, None)
    return _flatten(container)


def config_differences(recorded: DictConfig, current: DictConfig) -> list[str]:
    """`key: recorded X, now Y` for every result-changing key that differs."""
    old, new = _comparable(recorded), _comparable(current)
    absent = object()
    show = lambda v: "absent" if v is absent else json.dumps(v)  # noqa: E731
    lines = []
    for key in sorted(set(old) | set(new)):
        before, now = old.get(key, absent), new.get(key, absent)
        if before != now:
            lines.append(f"{key}: recorded {show(before)}, now {show(now)}")
    return lines


def claim_run_dir(run_dir: Path, cfg: DictConfig, hydra_cfg: DictConfig | None = None) -> bool:
    """Check the run folder against `cfg.resume`, then record the config in `.hydra/`.

    Returns True when an interrupted run is continued (resume=true and a metrics.json there).
    """
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.json"
    recorded_path = run_dir / ".hydra" / "config.yaml"
    resume = bool(cfg.get("resume", False))
    resuming = False
    if not resume and metrics.is_file():
        raise PreflightError(
            f"The run folder {run_dir} already holds a run (metrics.json); nothing was changed "
            f"there. Pass resume=true to finish that run in place (its finished objects are "
            f"kept), or choose another folder: hydra.run.dir=<new folder>, or leave "
            f"hydra.run.dir unset for a new time-stamped one."
        )
    if resume:
        if recorded_path.is_file():
            diffs = config_differences(OmegaConf.load(recorded_path), cfg)
            if diffs:
                raise PreflightError(
                    f"resume=true: the configuration differs from the one recorded in "
                    f"{recorded_path}; nothing was changed there.\n  "
                    + "\n  ".join(diffs)
                    + "\nResume with the recorded values (drop or fix those overrides), or start "
                    "a new run in another folder (without resume=true)."
                )
        elif metrics.is_file():
            raise PreflightError(
                f"resume=true: {run_dir} holds a metrics.json but no recorded configuration "
                f"({recorded_path}), so it cannot be checked that the run is the same. Start "
                f"a new run in another folder."
            )
        resuming = metrics.is_file()
        if not resuming and not recorded_path.is_file():
            given = _run_overrides(hydra_cfg)
            if hydra_cfg is not None and not given:
                raise PreflightError(
                    f"resume=true: {run_dir} holds no recorded run (no {recorded_path.name} in "
                    f"{recorded_path.parent}, no metrics.json), and no override says which run "
                    f"to start there; nothing was run. Give the run's overrides again to start "
                    f"it in that folder (e.g. `data=... method=... resume=true "
                    f"hydra.run.dir={run_dir}`; to run the defaults there, name one, e.g. "
                    f"data=synthetic), or drop resume=true."
                )
            log.info(
                "resume=true: %s holds no recorded run yet; starting the run there with the "
                "given overrides (%s)",
                run_dir,
                " ".join(given),
            )
        elif not resuming:
            log.info("resume=true: no finished object in %s yet; starting the run there", run_dir)
    _record(run_dir, cfg, hydra_cfg)
    return resuming


def _run_overrides(hydra_cfg: DictConfig | None) -> list[str]:
    """The command line's overrides that say which run this is (not `resume`, `progress`, ...)."""
    if hydra_cfg is None:
        return []
    given = [str(o) for o in (OmegaConf.select(hydra_cfg, "overrides.task") or [])]
    return [o for o in given if _key(o).split(".", 1)[0] not in IGNORED_KEYS]


def _record(run_dir: Path, cfg: DictConfig, hydra_cfg: DictConfig | None) -> None:
    """`.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml`, as Hydra writes them."""
    folder = run_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    if hydra_cfg is not None:
        (folder / "hydra.yaml").write_text(
            OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg}))
        )
        (folder / "overrides.yaml").write_text(OmegaConf.to_yaml(hydra_cfg.overrides.task))


# -- resume command line ----------------------------------------------------------------------
def _key(override: str) -> str:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(override)
    return parsed.get_key_element().lstrip("+~")


def resume_argv(argv: list[str]) -> list[str]:
    """`argv` plus the overrides recorded in the `hydra.run.dir` folder when resume=true.

    Only for single runs (no -m): the command line's own overrides win; a changed result key is
    then refused by `claim_run_dir`.
    """
    args = list(argv)
    if "-m" in args or "--multirun" in args:
        return args
    values = {}
    for arg in args:
        if "=" in arg and not arg.startswith("-"):
            key, value = arg.split("=", 1)
            values[key.lstrip("+~")] = value
    if str(values.get("resume", "")).lower() != "true" or "hydra.run.dir" not in values:
        return args
    recorded = Path(values["hydra.run.dir"]).expanduser() / ".hydra" / "overrides.yaml"
    if not recorded.is_file():
        return args
    try:
        overrides = [str(o) for o in (yaml.safe_load(recorded.read_text()) or [])]
        given = {_key(a) for a in args if "=" in a and not a.startswith("-")}
        missing = [o for o in overrides if _key(o) not in given]
    except Exception:  # noqa: BLE001 - a damaged record is reported by claim_run_dir instead
        return args
    return missing + args
