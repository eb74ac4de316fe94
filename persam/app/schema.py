"""Typed schemas of the run configuration, registered in Hydra's ConfigStore.

Each YAML file of `conf/method/` and `conf/data/` (and `conf/config.yaml`) names its schema
first in its `defaults` list, as Hydra's structured-config pattern does, so a value of the wrong
type fails when the config is composed, with the field named:

    python -m persam.run method.negative_point=flase
    Error merging override method.negative_point=flase
    Value 'flase' is not a valid bool (type str)
        full_key: method.negative_point

Choices are `str` enums (`method.target_pooling`, `method.scale_weights.backend` / `fused` /
`loop`, `data.exif`).
OmegaConf also reads `yes`/`no`/`on`/`off`/`1`/`0` as booleans; `check_overrides` refuses those
spellings on the command line too, so a boolean switch accepts only `true` or `false`.
A method's fields are declared once, in its options dataclass (`persam.model.options`); its
schema here is derived from it. A new field of a dataset must be added to its schema here (the
schemas are strict: an unknown key fails at composition). The root schema types the run-level keys only and
leaves the others open.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from persam.model.options import (  # noqa: F401 - Choice, plain: re-exported
    Choice,
    GFSAMOptions,
    PerSAMFOptions,
    PerSAMOptions,
    plain,
)


def _method_schema(options: type, target: str, name: str) -> type:
    """A method's schema: its options dataclass (the one declaration of its fields) plus the
    `_target_` and `name` keys of its YAML file."""
    return make_dataclass(
        f"{options.__name__.removesuffix('Options')}Schema",
        [("_target_", str, field(default=target)), ("name", str, field(default=name))],
        bases=(options,),
    )


# -- method ----------------------------------------------------------------------------------
PerSAMSchema = _method_schema(PerSAMOptions, "persam.model.method.PerSAM", "persam")
PerSAMFSchema = _method_schema(PerSAMFOptions, "persam.model.method.PerSAMF", "persam_f")
GFSAMSchema = _method_schema(GFSAMOptions, "persam.model.gf_sam.GFSAM", "gf_sam")
# PerSAM on DINOv2 features (conf/method/persam_dinov2.yaml): PerSAM's fields plus the slot of
# the method's own `features` group (the `features` constructor argument, not an option).
PerSAMFeaturesSchema = make_dataclass(
    "PerSAMFeaturesSchema",
    [("features", Any, field(default=None))],
    bases=(_method_schema(PerSAMOptions, "persam.model.method.PerSAM", "persam_dinov2"),),
)


# -- data ------------------------------------------------------------------------------------
class Exif(Choice):
    """What to do with an EXIF orientation tag (see `persam.data.perseg`)."""

    error = "error"  # refuse the object, naming the file and the two ways on
    apply = "apply"  # rotate the image and its masks as the tag says
    ignore = "ignore"  # use the stored pixels of images and masks alike


@dataclass
class PerSegSchema:
    task: Any = None  # {_target_: <Task class>, _partial_: true}, built by the entry point
    _target_: str = "persam.data.perseg.PerSegDataset"
    root: str = "data/PerSeg"
    reference: str = "00"
    objects: Optional[list[str]] = None  # noqa: UP045 - OmegaConf needs typing.Optional
    instances_root: Optional[str] = None  # noqa: UP045
    reference_perturbation: str = "none"  # checked by persam.data.perturb
    perturbation_amount: float = 0.1
    shots: int = 1  # k-shot: reference images per object
    exif: Exif = Exif.error


@dataclass
class SyntheticSchema:
    task: Any = None
    _target_: str = "persam.data.synthetic.synthetic_dataset"
    root: str = "synthetic"
    split: str = "heldout"
    seed: int = 0
    num_objects: int = 6
    images_per_object: int = 4
    instances_per_image: Any = 1  # N, or [lo, hi]
    reference: str = "00"
    objects: Optional[list[str]] = None  # noqa: UP045
    instances_root: Optional[str] = None  # noqa: UP045
    reference_perturbation: str = "none"
    perturbation_amount: float = 0.1
    shots: int = 1  # k-shot: reference images per object


# -- run -------------------------------------------------------------------------------------
@dataclass
class CacheSchema:
    _target_: str = "persam.model.cache.EmbeddingCache"
    enabled: bool = True
    root: str = "embeddings"


@dataclass
class RunSchema:
    """Run-level keys of `conf/config.yaml`; other keys (groups, ...) stay open."""

    task_name: str = "persam"
    seed: int = 0
    overlays: bool = True
    max_logged_images: int = 6
    progress: bool = True
    strict: bool = True
    resume: bool = False
    cache: CacheSchema = field(default_factory=CacheSchema)


# Ranges of the data's integer fields, checked by `check_config` (OmegaConf types ints, not
# ranges); a method's rules are its options' own (`persam.model.options`).
POSITIVE_INTS = (
    "data.num_objects",
    "data.images_per_object",
    "data.shots",
)

# Stored at the top of the ConfigStore, not in the `method` / `data` groups, so that `--help`
# does not offer them as choices (method=persam_schema would fail with MissingMandatoryValue):
# a group's file names its schema first in its defaults as `/<name>@_here_`.
SCHEMAS = {
    "persam_schema": PerSAMSchema,
    "persam_f_schema": PerSAMFSchema,
    "persam_features_schema": PerSAMFeaturesSchema,
    "gf_sam_schema": GFSAMSchema,
    "perseg_schema": PerSegSchema,
    "synthetic_schema": SyntheticSchema,
}


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent; done when `persam` is imported)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        cs.store(name=name, node=schema)
    root = OmegaConf.structured(RunSchema)
    OmegaConf.set_struct(root, False)  # typed run-level keys; the rest of config.yaml stays open
    cs.store(name="run_schema", node=root)


class ConfigError(ValueError):
    """A configuration value is out of range or spelled in a way that is refused."""


def _bool_fields(schema, prefix: str) -> set[str]:
    out = set()
    for f in fields(schema):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if f.type in ("bool", bool):
            out.add(prefix + f.name)
        elif is_dataclass(default):
            out |= _bool_fields(type(default), f"{prefix}{f.name}.")
    return out


BOOL_FIELDS = (
    _bool_fields(PerSAMFSchema, "method.")
    | _bool_fields(RunSchema, "")
    | _bool_fields(PerSegSchema, "data.")
)


def check_overrides(overrides: list[str]) -> None:
    """Refuse command-line booleans spelled other than true/false (`no`, `on`, `1`, ...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key not in BOOL_FIELDS or override.is_delete():
            continue
        values = (
            list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        )
        for value in values:
            if not isinstance(value, bool):
                raise ConfigError(
                    f"{key} is a boolean switch: write {key}=true or {key}=false "
                    f"(got {override.input_line!r})."
                )


def check_config(cfg: DictConfig) -> None:
    """The rules the types alone do not say, before any work: the method's options (checked by
    the options class its `_target_` names) and the data's ranges; names the field."""
    check_method(cfg.get("method"))
    for key in POSITIVE_INTS:
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key}={value} must be at least 1.")


def check_method(method: DictConfig | None) -> None:
    """Build the options of `method` (its class's `Options`) so that a bad value stops here."""
    if method is None or "_target_" not in method:
        return
    from hydra.utils import get_class

    try:
        cls = get_class(method._target_)
    except Exception:  # noqa: BLE001 - instantiation reports a bad target itself
        return
    options = getattr(cls, "Options", None)
    if options is None:
        return
    values = OmegaConf.to_container(method, resolve=True)
    values = {k: v for k, v in values.items() if k not in ("_target_", "name")}
    known = {f.name for f in fields(options)}
    try:
        options(**{k: v for k, v in values.items() if k in known})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
