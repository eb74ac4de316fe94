"""persam: Personalize Segment Anything (PerSAM / PerSAM-F) on `segment_anything`.

Importing the package registers the OmegaConf resolvers used by ``conf/``:

- ``${persam_weights:NAME}``: the absolute path of ``NAME`` inside the installed package's
  ``weights/`` folder (where the embedded SAM of ``conf/backbone/embedded.yaml`` is shipped).
- ``${persam_sweep:}``: the multirun folder's name in a sweep job, else null (the W&B group).
- ``${persam_job:}``: the job's name, its overrides joined (or the task name) (the W&B run name).

It also stores the config schemas of `persam.schema` in Hydra's ConfigStore.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def weights_path(name: str) -> str:
    """Absolute path of a file shipped in ``persam/weights`` (it need not exist)."""
    return str(WEIGHTS_DIR / name)


def _hydra_config():
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get() if HydraConfig.initialized() else None
    except ImportError:  # pragma: no cover
        return None


def sweep_name() -> str | None:
    """Name of the sweep folder of a multirun job; None outside a multirun."""
    hc = _hydra_config()
    if hc is None or str(hc.mode) != "RunMode.MULTIRUN":
        return None
    return Path(hc.sweep.dir).name


def job_name() -> str | None:
    """The job's overrides joined (`method=persam_f,seed=1`), or its task name."""
    hc = _hydra_config()
    if hc is None:
        return None
    return hc.job.override_dirname or hc.job.name


def _register_resolvers() -> None:
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency; stay importable anyway
        return
    if not OmegaConf.has_resolver("persam_weights"):
        OmegaConf.register_new_resolver("persam_weights", weights_path)
    if not OmegaConf.has_resolver("persam_sweep"):
        OmegaConf.register_new_resolver("persam_sweep", sweep_name)
    if not OmegaConf.has_resolver("persam_job"):
        OmegaConf.register_new_resolver("persam_job", job_name)


_register_resolvers()


def _register_schemas() -> None:
    try:
        from persam.schema import register
    except ImportError:  # pragma: no cover - hydra is a dependency; stay importable anyway
        return
    register()


_register_schemas()
