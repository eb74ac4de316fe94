"""Compose every config of every group, and every experiment; instantiate what can be built."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from persam.conf import CONFIG_DIR
from persam.model.method import PerSAM, PerSAMF

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


BACKBONES = [b for b in _options("backbone") if b != "base"]

# What every architecture shares: segment_anything's `_build_sam` (build_sam.py).
SAM_COMMON = dict(
    _target_="persam.backbones.sam.build_sam",
    seed=0,
    device="auto",
    window_size=14,
    image_size=1024,
    vit_patch_size=16,
    prompt_embed_dim=256,
    mask_in_chans=16,
    decoder_depth=2,
    decoder_mlp_dim=2048,
    decoder_num_heads=8,
    num_multimask_outputs=3,
    iou_head_depth=3,
    iou_head_hidden_dim=256,
)


def _encoder(dim, depth, heads, global_attn):
    return dict(
        encoder_embed_dim=dim,
        encoder_depth=depth,
        encoder_num_heads=heads,
        encoder_global_attn_indexes=global_attn,
    )


# The composed backbone configs, field by field: the official numbers are those of
# segment_anything's build_sam_vit_h / _l / _b; tiny is ../shared/golden/tiny_sam.json; embedded
# is the architecture the shipped persam/weights/embedded_sam.pth was trained with.
EXPECTED_BACKBONES = {
    "vit_h": SAM_COMMON
    | _encoder(1280, 32, 16, [7, 15, 23, 31])
    | dict(name="vit_h", checkpoint="${paths.checkpoint_dir}/sam_vit_h_4b8939.pth"),
    "vit_l": SAM_COMMON
    | _encoder(1024, 24, 16, [5, 11, 17, 23])
    | dict(name="vit_l", checkpoint="${paths.checkpoint_dir}/sam_vit_l_0b3195.pth"),
    "vit_b": SAM_COMMON
    | _encoder(768, 12, 12, [2, 5, 8, 11])
    | dict(name="vit_b", checkpoint="${paths.checkpoint_dir}/sam_vit_b_01ec64.pth"),
    "tiny": SAM_COMMON | _encoder(96, 2, 2, [1]) | dict(name="tiny", checkpoint=None),
    "embedded": SAM_COMMON
    | _encoder(128, 4, 4, [1, 3])
    | dict(
        name="embedded",
        checkpoint="${persam_weights:embedded_sam.pth}",
        window_size=8,
        image_size=256,
        prompt_embed_dim=128,
        decoder_mlp_dim=512,
        decoder_num_heads=4,
        iou_head_hidden_dim=128,
    ),
    # MobileSAM's build_sam_vit_t: TinyViT-5M, per stage; SAM's decoder.
    "mobile_sam": SAM_COMMON
    | dict(
        _target_="persam.backbones.mobile_sam.build_mobile_sam",
        name="mobile_sam",
        checkpoint="${paths.checkpoint_dir}/mobile_sam.pt",
        encoder_embed_dim=[64, 128, 160, 320],
        encoder_depth=[2, 2, 6, 2],
        encoder_num_heads=[2, 4, 5, 10],
        encoder_global_attn_indexes=[],
        window_size=[7, 7, 14, 7],
    ),
    # EfficientViT-SAM: not a ViT (the ViT fields null), the package's architecture by variant.
    **{
        f"efficientvit_sam_{v}": SAM_COMMON
        | dict(
            _target_="persam.backbones.efficientvit_sam.build_efficientvit_sam",
            name=f"efficientvit_sam_{v}",
            checkpoint=f"${{paths.checkpoint_dir}}/efficientvit_sam_{v}.pt",
            encoder_embed_dim=None,
            encoder_depth=None,
            encoder_num_heads=None,
            encoder_global_attn_indexes=None,
            window_size=None,
            variant=v,
            encoder_input_size=size,
        )
        for v, size in (("l0", 512), ("l1", 512), ("l2", 512), ("xl0", 1024), ("xl1", 1024))
    },
    # SAM 2.1 image models, from the sam2 package's own model configs.
    **{
        f"sam2_{size}": SAM_COMMON
        | dict(
            _target_="persam.backbones.sam2.build_sam2",
            name=f"sam2_{size}",
            checkpoint=f"${{paths.checkpoint_dir}}/sam2.1_{file}.pt",
            encoder_embed_dim=None,
            encoder_depth=None,
            encoder_num_heads=None,
            encoder_global_attn_indexes=None,
            window_size=None,
            model_config=f"configs/sam2.1/sam2.1_{cfg}.yaml",
        )
        for size, cfg, file in (
            ("hiera_t", "hiera_t", "hiera_tiny"),
            ("hiera_s", "hiera_s", "hiera_small"),
            ("hiera_b_plus", "hiera_b+", "hiera_base_plus"),
            ("hiera_l", "hiera_l", "hiera_large"),
        )
    },
    # transformers' SamModel, vit_b's sizes, read from segment_anything's vit_b checkpoint.
    "hf_sam": SAM_COMMON
    | _encoder(768, 12, 12, [2, 5, 8, 11])
    | dict(
        _target_="persam.backbones.hf_sam.build_hf_sam",
        name="hf_sam",
        checkpoint="${paths.checkpoint_dir}/sam_vit_b_01ec64.pth",
    ),
}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_compose_backbones(backbone):
    cfg = _compose([f"backbone={backbone}"])
    assert OmegaConf.to_container(cfg.backbone) == EXPECTED_BACKBONES[backbone]
    # SAM's field order (the base's), whatever each file overrides; a family's own fields after
    base = list(OmegaConf.load(CONF / "backbone_base.yaml"))
    assert list(cfg.backbone)[: len(base)] == base


def test_backbone_files_state_only_what_differs_from_the_base():
    base = OmegaConf.to_container(OmegaConf.load(CONF / "backbone_base.yaml"))
    for name in BACKBONES:
        own = OmegaConf.load(CONF / "backbone" / f"{name}.yaml")
        assert list(own.defaults) == ["/backbone_base@_here_", "_self_"], name
        fields = OmegaConf.to_container(own, resolve=False)
        same = [k for k, v in fields.items() if k in base and v == base[k]]
        assert not same, f"{name}.yaml repeats the base's {same}"


def test_the_base_is_not_a_backbone():
    cfg = OmegaConf.load(CONF / "backbone_base.yaml")  # not a backbone= choice (issue 23)
    assert "base" not in _options("backbone")
    with pytest.raises(MissingMandatoryValue, match="name"):
        instantiate(cfg)


@pytest.fixture(scope="module")
def default_sam():
    return instantiate(_compose([]).backbone)


# GF-SAM has its own switches (the ablation files are PerSAM's): tests/test_gfsam.py.
@pytest.mark.parametrize("method", [m for m in _options("method") if m != "gf_sam"])
@pytest.mark.parametrize("ablation", [None, *_options("ablation")])
def test_compose_and_instantiate_methods(method, ablation, default_sam):
    # PerSAM on DINOv2 features builds its own DINOv2: the smallest, random
    small = ["method.features.name=dinov2_vits14", "method.features.checkpoint=random"]
    extra = small if method == "persam_dinov2" else []
    cfg = _compose([f"method={method}", *extra] + ([f"ablation={ablation}"] if ablation else []))
    trainer = instantiate(cfg.trainer)
    obj = instantiate(cfg.method, sam=default_sam, trainer=trainer)
    assert isinstance(obj, PerSAMF if method == "persam_f" else PerSAM)
    assert obj.sam is default_sam and obj.trainer is trainer
    if ablation is not None:
        switches = {k: getattr(obj, k) for k in ABLATIONS[ablation]}
        assert switches == ABLATIONS[ablation], ablation


def _switches(negative, refine, guided, semantic):
    return dict(
        positive_point=True,
        negative_point=negative,
        refine_steps=2 if refine else 0,
        guided_attention=guided,
        semantic_prompt=semantic,
    )


# Paper Table 6: components added one by one (c1..c5: positive prior, + negative point,
# + post refinement, + guided attention, + semantic prompt), then each removed from full PerSAM.
ABLATIONS = {
    "c1_positive": _switches(False, False, False, False),
    "c2_negative": _switches(True, False, False, False),
    "c3_refine": _switches(True, True, False, False),
    "c4_guided": _switches(True, True, True, False),
    "c5_semantic": _switches(True, True, True, True),
    "no_negative": _switches(False, True, True, True),
    "no_refine": _switches(True, False, True, True),
    "no_guided": _switches(True, True, False, True),
    "no_semantic": _switches(True, True, True, False),
}


def test_every_ablation_file_is_asserted():
    assert set(_options("ablation")) == set(ABLATIONS)


def test_train_config_composes_and_builds(tmp_path):
    """conf/train.yaml: the data module, the model (with the backbone's architecture) and the
    record callback, built by `instantiate` as `persam.train` builds them."""
    from persam.train import architecture
    from persam.training.data import ScenePairData
    from persam.training.module import EmbeddedSamModule
    from persam.training.record import TrainingRecord

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["train.batch_size=2", "train.data.num_identities=3"])
    assert "method" not in cfg  # no placeholder keys
    arch = architecture(cfg.backbone)
    assert arch["image_size"] == cfg.backbone.image_size == 256  # the embedded architecture
    data = instantiate(cfg.train.data)
    assert isinstance(data, ScenePairData) and data.hparams.batch_size == 2
    assert data.hparams.image_size == 256 and data.num_scenes == 3 * 6
    model = instantiate(cfg.train.module, architecture=arch)
    assert isinstance(model, EmbeddedSamModule) and model.init_from is None
    assert model.hparams.architecture == arch
    embedded = instantiate(_compose(["backbone.device=cpu"]).backbone)
    assert model.sam.state_dict().keys() == embedded.state_dict().keys()
    record = instantiate(cfg.train.callbacks.record, run_dir=tmp_path, overrides=[])
    assert isinstance(record, TrainingRecord) and record.export_dir is None
    factory = instantiate(cfg.trainer)
    assert factory.keywords["max_steps"] == 3100 and factory.keywords["gradient_clip_val"] == 1.0


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


def test_debug_configs_are_the_tests_small_runs():
    """`debug=tiny` is the small random-init SAM of the end-to-end tests with the run's extras
    off; `debug=default` only turns the extras off; both for `persam.run` and `persam.video`,
    and a group chosen on the command line still wins."""
    from helpers import SMALL_BACKBONE

    quiet = ["logger=none", "progress=false", "overlays=false"]
    for name in ("config", "video"):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            tiny = compose(name, overrides=["debug=tiny"])
            spelled = compose(name, overrides=[*SMALL_BACKBONE, *quiet])
            default = compose(name, overrides=["debug=default"])
            plain = compose(name, overrides=quiet)
            csv = compose(name, overrides=["debug=default", "logger=csv"])
        assert OmegaConf.to_yaml(tiny) == OmegaConf.to_yaml(spelled), name
        assert OmegaConf.to_yaml(default) == OmegaConf.to_yaml(plain), name
        assert csv.logger is not None and not csv.overlays
