"""Compose every config of every group, and every experiment; instantiate what can be built."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate

from persam.conf import CONFIG_DIR
from persam.method import PerSAM, PerSAMF

CONF = Path(CONFIG_DIR)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides: list[str], hydra_cfg: bool = False):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra_cfg)


def test_groups_mirror_the_code():
    for group in ("backbone", "method", "data", "logger", "trainer", "experiment", "ablation"):
        assert _options(group), group
    assert {"tiny", "vit_b", "vit_l", "vit_h"} <= set(_options("backbone"))
    assert {"persam", "persam_f"} <= set(_options("method"))
    assert {"perseg", "synthetic"} <= set(_options("data"))
    assert {"wandb", "csv", "none"} <= set(_options("logger"))


@pytest.mark.parametrize("backbone", _options("backbone"))
def test_compose_backbones(backbone):
    cfg = _compose([f"backbone={backbone}"])
    assert cfg.backbone.name == backbone
    assert cfg.backbone._target_ == "persam.backbone.build_sam"


@pytest.fixture(scope="module")
def default_sam():
    return instantiate(_compose([]).backbone)


@pytest.mark.parametrize("method", _options("method"))
@pytest.mark.parametrize("ablation", [None, *_options("ablation")])
def test_compose_and_instantiate_methods(method, ablation, default_sam):
    cfg = _compose([f"method={method}"] + ([f"ablation={ablation}"] if ablation else []))
    trainer = instantiate(cfg.trainer)
    obj = instantiate(cfg.method, sam=default_sam, trainer=trainer)
    assert isinstance(obj, PerSAMF if method == "persam_f" else PerSAM)
    assert obj.sam is default_sam and obj.trainer is trainer
    if ablation == "c1_positive":
        assert not (obj.negative_point or obj.guided_attention or obj.semantic_prompt)
        assert obj.refine_steps == 0


@pytest.mark.parametrize("trainer", _options("trainer"))
def test_trainer_group_is_a_lightning_trainer_factory(trainer):
    import functools

    import lightning

    cfg = _compose([f"trainer={trainer}"])
    factory = instantiate(cfg.trainer)
    assert isinstance(factory, functools.partial) and factory.func is lightning.Trainer
    assert factory.keywords["accelerator"] == ("gpu" if trainer == "gpu" else "cpu")
    if trainer == "cpu":
        built = factory(max_steps=3, logger=False, enable_checkpointing=False)
        assert built.max_steps == 3


@pytest.mark.parametrize("logger", _options("logger"))
def test_compose_and_instantiate_loggers(logger, tmp_path):
    cfg = _compose([f"logger={logger}"])
    if logger == "none":
        assert cfg.logger is None
        return
    built = instantiate(cfg.logger, save_dir=str(tmp_path))
    assert type(built).__name__ in ("CSVLogger", "WandbLogger")
    if logger == "wandb":
        assert cfg.logger.offline is True


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_compose_experiments(experiment):
    cfg = _compose([f"experiment={experiment}"], hydra_cfg=True)
    assert cfg.task_name == experiment
    assert cfg.hydra.sweeper.params, "an experiment defines its sweep"


@pytest.mark.parametrize(
    "launcher", ["local", "slurm", "joblib", "submitit_local", "submitit_slurm"]
)
def test_compose_launchers(launcher):
    cfg = _compose([f"hydra/launcher={launcher}"], hydra_cfg=True)
    assert "Launcher" in cfg.hydra.launcher._target_


def test_unknown_component_is_a_clear_error():
    with pytest.raises(ConfigCompositionException, match="semantic_prompting"):
        _compose(["method.semantic_prompting=false"])


def test_unknown_experiment_is_a_clear_error():
    with pytest.raises(MissingConfigException, match="no_such_study"):
        _compose(["experiment=no_such_study"])
