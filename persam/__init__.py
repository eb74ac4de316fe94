"""persam: Personalize Segment Anything (PerSAM / PerSAM-F) on `segment_anything`.

Importing the package registers the OmegaConf resolvers used by ``conf/``:

- ``${persam_weights:NAME}``: the absolute path of ``NAME`` inside the installed package's
  ``weights/`` folder (where the embedded SAM of ``conf/backbone/embedded.yaml`` is shipped).
- ``${persam_sweep:}``: the multirun folder's name in a sweep job, else null (the W&B group).
- ``${persam_job:}``: the job's name, its overrides joined (or the task name) (the W&B run name).

It also stores the config schemas of `persam.app.schema` in Hydra's ConfigStore.

The Python API (loaded on first use, so `import persam` stays light):

    sam = persam.build_sam("embedded")        # persam.api.build_sam
    model = persam.PerSAM(sam)                # persam.model.method.PerSAM / PerSAMF
    prediction = model.segment(test_image, model.learn(reference_image, reference_mask))
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
        from persam.app.schema import register
    except ImportError:  # pragma: no cover - hydra is a dependency; stay importable anyway
        return
    register()


_register_schemas()


_API = {
    "build_sam": "persam.api",
    "example": "persam.data.synthetic.disk",
    "PerSAM": "persam.model.method",
    "PerSAMF": "persam.model.method",
    "Target": "persam.model.method",
    "Prediction": "persam.model.method",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    """The public API, imported when first used (PEP 562)."""
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'persam' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
