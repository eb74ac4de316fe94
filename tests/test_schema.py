"""Strict configuration: typed schemas in Hydra's ConfigStore, checked when composed."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from persam.app.schema import ConfigError, check_config, check_overrides
from persam.conf import CONFIG_DIR
from persam.model.method import PerSAMF


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize(
    ("override", "field", "says"),
    [
        ("method.negative_point=flase", "method.negative_point", "not a valid bool"),
        ("method=persam_f", None, None),
        ("method.refine_steps=two", "method.refine_steps", "could not be converted to Integer"),
        ("method.target_pooling=max", "method.target_pooling", "expected one of [mean, max_mean]"),
        ("data=perseg", None, None),
        ("data.exif=rotate", "data.exif", "expected one of [error, apply, ignore]"),
        ("overlays=maybe", "overlays", "not a valid bool"),
        ("cache.enabled=off_", "cache.enabled", "not a valid bool"),
        ("seed=1.5", "seed", "Integer"),
        ("method=gf_sam", None, None),
        ("method.max_points=many", "method.max_points", "could not be converted to Integer"),
        (
            "method.empty_reference=skip",
            "method.empty_reference",
            "expected one of [square, raise]",
        ),
        ("method.mask_growth=ye", "method.mask_growth", "not a valid bool"),
    ],
)
def test_wrong_types_fail_at_composition_naming_the_field(override, field, says):
    overrides = ["data=perseg", override] if override.startswith("data.") else [override]
    if override.split("=")[0] in (
        "method.max_points",
        "method.empty_reference",
        "method.mask_growth",
    ):
        overrides = ["method=gf_sam", *overrides]
    if field is None:
        _compose(overrides)
        return
    with pytest.raises(ConfigCompositionException) as err:
        _compose(overrides)
    cause = str(err.value.__cause__)
    assert f"full_key: {field}" in cause and says in cause, cause


def test_scale_weights_are_typed_and_reach_the_method_as_plain_values():
    with pytest.raises(ConfigCompositionException, match="fused"):
        _compose(["method=persam_f", "method.scale_weights.fused=jit"])
    cfg = _compose(["method=persam_f", "method.scale_weights.fused=eager"])
    method = instantiate(
        cfg.method, sam=instantiate(cfg.backbone), trainer=instantiate(cfg.trainer)
    )
    assert isinstance(method, PerSAMF)
    assert method.scale_weights["fused"] == "eager" and type(method.scale_weights["fused"]) is str
    assert method.scale_weights["loop"] == "plain"  # the default
    with pytest.raises(ConfigCompositionException) as err:
        _compose(["method=persam_f", "method.scale_weights.loop=lightning"])
    cause = str(err.value.__cause__)
    assert "full_key: method.scale_weights.loop" in cause and "[plain, trainer]" in cause, cause
    cfg = _compose(["method=persam_f", "method.scale_weights.loop=trainer"])
    method = instantiate(cfg.method, sam=method.sam, trainer=instantiate(cfg.trainer))
    assert method.scale_weights["loop"] == "trainer" and type(method.scale_weights["loop"]) is str
    assert method.target_pooling == "max_mean" and type(method.target_pooling) is str


@pytest.mark.parametrize("value", ["no", "yes", "on", "off", "1", "0"])
def test_boolean_switches_accept_only_true_or_false(value):
    override = f"method.semantic_prompt={value}"
    _compose([override])  # OmegaConf reads these as booleans...
    with pytest.raises(ConfigError, match="method.semantic_prompt=true or method.semantic_prompt"):
        check_overrides([override])  # ...persam.run refuses them before any work
    check_overrides(["method.semantic_prompt=false", "method.guided_attention=true,false"])
    with pytest.raises(ConfigError, match="resume"):
        check_overrides(["resume=yes"])


def test_integer_choices_are_checked_naming_the_field():
    check_config(_compose(["method.refine_steps=1"]))
    with pytest.raises(ConfigError, match=r"method.refine_steps=3 is not allowed: choose one"):
        check_config(_compose(["method.refine_steps=3"]))
    with pytest.raises(ConfigError, match=r"method.scale_weights.steps=0 must be at least 1"):
        check_config(_compose(["method=persam_f", "method.scale_weights.steps=0"]))


def test_choices_print_as_their_plain_strings():
    cfg = _compose(["method.target_pooling=max_mean"])
    value = cfg.method.target_pooling
    assert value == "max_mean" and str(value) == "max_mean" and f"{value}" == "max_mean"


def test_gf_sam_fields_are_declared_once_and_reach_the_method_as_plain_values():
    """conf/method/gf_sam.yaml states `_target_` and `name`; its fields and defaults are
    `GFSAMOptions`'s (the constructor's), typed through the derived schema."""
    from dataclasses import asdict

    from omegaconf import OmegaConf

    from persam.conf import CONFIG_DIR as conf
    from persam.model.gf_sam import GFSAM
    from persam.model.options import GFSAMOptions

    stated = OmegaConf.load(f"{conf}/method/gf_sam.yaml")
    assert set(stated) == {"defaults", "_target_", "name"}
    cfg = _compose(["method=gf_sam", "features=sam", "method.empty_reference=raise"])
    options = {k: v for k, v in OmegaConf.to_container(cfg.method).items() if k[0] != "_"}
    options.pop("name")
    defaults = {
        k: str(v) if k == "empty_reference" else v for k, v in asdict(GFSAMOptions()).items()
    }
    assert options == {**defaults, "empty_reference": "raise"}
    method = instantiate(cfg.method, sam=instantiate(cfg.backbone))
    assert isinstance(method, GFSAM)
    assert method.empty_reference == "raise" and type(method.empty_reference) is str
    with pytest.raises(TypeError, match="unexpected keyword argument.*mask_grow.*the fields are"):
        GFSAM(method.sam, mask_grow=False)
