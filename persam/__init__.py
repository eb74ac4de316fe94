"""persam: Personalize Segment Anything (PerSAM / PerSAM-F) on `segment_anything`.

Importing the package registers the OmegaConf resolver ``${persam_weights:NAME}``: the absolute
path of ``NAME`` inside the installed package's ``weights/`` folder (where the embedded SAM of
``conf/backbone/embedded.yaml`` is shipped), and stores the config schemas of `persam.schema`
in Hydra's ConfigStore.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def weights_path(name: str) -> str:
    """Absolute path of a file shipped in ``persam/weights`` (it need not exist)."""
    return str(WEIGHTS_DIR / name)


def _register_resolvers() -> None:
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency; stay importable anyway
        return
    if not OmegaConf.has_resolver("persam_weights"):
        OmegaConf.register_new_resolver("persam_weights", weights_path)


_register_resolvers()


def _register_schemas() -> None:
    try:
        from persam.schema import register
    except ImportError:  # pragma: no cover - hydra is a dependency; stay importable anyway
        return
    register()


_register_schemas()
