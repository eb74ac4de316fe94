"""A SAM ViT checkpoint that does not fit the configured backbone is built with its own
architecture, read from its parameter shapes (persam/backbones/architecture.py) and the record beside it;
what cannot be read is refused with the file and the fix."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from segment_anything import sam_model_registry

import persam
from persam.backbones.architecture import checkpoint_architecture, normalise, parameter_shapes
from persam.backbones.sam import CheckpointError, build_architecture
from persam.conf import CONFIG_DIR
from persam.model.cache import EmbeddingCache
from persam.model.encoder import Encoder

WEIGHTS = Path(persam.__file__).resolve().parent / "weights"
SHIPPED = WEIGHTS / "embedded_sam.pth"
EMBEDDED_ARCH = json.loads((WEIGHTS / "embedded_sam.json").read_text())["architecture"]
IMAGE = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=["backbone.device=cpu", *overrides])


def _build(*overrides: str):
    try:
        return instantiate(_compose(*overrides).backbone)
    except InstantiationException as exc:  # hydra wraps the builder's error
        if exc.__cause__ is not None:
            raise exc.__cause__ from exc
        raise


def _warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "persam.backbones.sam" and r.levelno == logging.WARNING
    ]


def _predict(sam) -> torch.Tensor:
    """Low-res logits of one point prompt (3 x 64 x 64 on the embedded model's grid)."""
    predictor = Encoder(sam).set_image(IMAGE)
    _, _, low = predictor.predict(
        point_coords=np.array([[90, 70]]), point_labels=np.array([1]), multimask_output=True
    )
    return torch.as_tensor(low)


@pytest.mark.parametrize("vit", ["vit_b", "vit_l", "vit_h"])
def test_the_shapes_of_segment_anythings_models_give_our_vit_configs(vit):
    """ViT-B/L/H as segment_anything's registry builds them (on the meta device: no memory):
    their shapes alone give every field of conf/backbone/<vit>.yaml."""
    with torch.device("meta"):
        model = sam_model_registry[vit]()
    read = checkpoint_architecture(parameter_shapes(model.state_dict()))
    configured = normalise(OmegaConf.to_container(_compose(f"backbone={vit}").backbone))
    assert read == {**configured, "mlp_ratio": 4.0}
    blocks = model.image_encoder.blocks
    assert read["encoder_num_heads"] == blocks[0].attn.num_heads
    assert read["encoder_global_attn_indexes"] == tuple(
        i for i, b in enumerate(blocks) if b.window_size == 0
    )


def test_a_vit_b_checkpoint_loads_through_any_backbone(tmp_path, caplog):
    """A ViT-B-sized state dict (segment_anything's registry, random weights, saved in fp16)
    loads with backbone=embedded: ViT-B is built, with one warning naming the fields."""
    torch.manual_seed(0)
    reference = sam_model_registry["vit_b"]()
    state = {k: v.half() for k, v in reference.state_dict().items()}
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(state, path)
    with caplog.at_level(logging.WARNING, logger="persam.backbones.sam"):
        sam = _build("backbone=embedded", f"backbone.checkpoint={path}")
    (warning,) = _warnings(caplog)
    assert str(path) in warning and "backbone 'embedded'" in warning
    assert "encoder_embed_dim 128 -> 768" in warning and "encoder_depth 4 -> 12" in warning
    assert "decoder_num_heads 4 -> 8" in warning and "record" not in warning
    loaded = sam.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], v.float()) for k, v in state.items())
    for ours, theirs in zip(sam.image_encoder.blocks, reference.image_encoder.blocks, strict=True):
        assert (ours.attn.num_heads, ours.window_size) == (
            theirs.attn.num_heads,
            theirs.window_size,
        )
    for ours, theirs in zip(
        sam.mask_decoder.transformer.layers, reference.mask_decoder.transformer.layers, strict=True
    ):
        assert ours.self_attn.num_heads == theirs.self_attn.num_heads == 8
    assert sam.image_encoder.img_size == 1024 and sam.architecture["encoder_depth"] == 12

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="persam.backbones.sam"):
        _build("backbone=vit_b", f"backbone.checkpoint={path}")  # it fits vit_b: as before
    assert _warnings(caplog) == []


def test_the_embedded_model_under_another_config_predicts_bit_identically(caplog):
    with caplog.at_level(logging.WARNING, logger="persam.backbones.sam"):
        shipped = _build()
    assert _warnings(caplog) == []  # the config fits: built exactly as configured
    with caplog.at_level(logging.WARNING, logger="persam.backbones.sam"):
        other = _build("backbone=vit_h", f"backbone.checkpoint={SHIPPED}")
    (warning,) = _warnings(caplog)
    assert "backbone 'vit_h'" in warning and "window_size 14 -> 8" in warning
    assert f"record {WEIGHTS / 'embedded_sam.json'}" in warning
    assert (
        other.architecture == shipped.architecture == normalise({**EMBEDDED_ARCH, "mlp_ratio": 4})
    )
    assert torch.equal(_predict(other), _predict(shipped))


@pytest.mark.golden
def test_the_golden_video_model_loads_as_embedded_and_through_any_backbone(golden, caplog):
    path = golden / "video" / "video_sam.pth"
    with caplog.at_level(logging.WARNING, logger="persam.backbones.sam"):
        as_embedded = _build("backbone=embedded", f"backbone.checkpoint={path}")
    assert _warnings(caplog) == []  # its architecture is the embedded one
    with caplog.at_level(logging.WARNING, logger="persam.backbones.sam"):
        as_tiny = _build("backbone=tiny", f"backbone.checkpoint={path}")
    (warning,) = _warnings(caplog)
    assert "video_sam.json" in warning  # its record (a plain architecture file) gave the heads
    recorded = normalise(json.loads((golden / "video" / "video_sam.json").read_text()))
    assert {k: as_tiny.architecture[k] for k in recorded} == recorded
    assert torch.equal(_predict(as_tiny), _predict(as_embedded))


def test_a_checkpoint_of_another_grid_loads_and_caches_apart(tmp_path, caplog):
    """A checkpoint trained with backbone.image_size=192 backbone.vit_patch_size=8 (no record)
    loads with backbone=embedded alone: a 24 x 24 grid; its embeddings never share the cache
    with the shipped model's."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        trained = build_architecture(**{**EMBEDDED_ARCH, "image_size": 192, "vit_patch_size": 8})
    path = tmp_path / "grid24.pth"
    torch.save(trained.state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="persam.backbones.sam"):
        sam = _build("backbone=embedded", f"backbone.checkpoint={path}")
    (warning,) = _warnings(caplog)
    assert "image_size 256 -> 192, vit_patch_size 16 -> 8)" in warning
    assert sam.architecture["decoder_num_heads"] == 4  # the config's decoder fits: its heads
    assert Encoder(sam).set_image(IMAGE).features.shape[-2:] == (24, 24)
    assert torch.equal(sam.image_encoder.pos_embed, trained.image_encoder.pos_embed)

    cache = EmbeddingCache(tmp_path / "cache")
    shipped = _build()
    for model in (shipped, sam, shipped, sam):
        Encoder(model, cache).set_image(IMAGE)
    assert (cache.stats.misses, cache.stats.hits) == (2, 2)
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 2


def test_blocks_that_all_span_the_grid_are_read_as_global(tmp_path):
    """Windows as large as the grid leave global vs windowed open; either computes the same."""
    arch = {
        **EMBEDDED_ARCH,
        "encoder_depth": 2,
        "encoder_global_attn_indexes": [],
        "window_size": 16,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        trained = build_architecture(**arch).eval()
    path = tmp_path / "all_windows.pth"
    torch.save(trained.state_dict(), path)
    sam = _build("backbone=embedded", f"backbone.checkpoint={path}")  # 4 blocks configured
    assert sam.architecture["encoder_global_attn_indexes"] == (0, 1)
    assert sam.architecture["window_size"] == 16
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(sam.image_encoder(x), trained.image_encoder(x))


def test_a_record_that_contradicts_the_shapes_is_refused(tmp_path, caplog):
    copy = tmp_path / "model.pth"
    shutil.copyfile(SHIPPED, copy)
    record = tmp_path / "model.json"
    record.write_text(json.dumps({"architecture": {**EMBEDDED_ARCH, "encoder_depth": 2}}))
    with pytest.raises(CheckpointError) as err:
        _build("backbone=embedded", f"backbone.checkpoint={copy}")
    msg = str(err.value)
    assert str(copy) in msg and "encoder_depth=2" in msg
    assert f"Correct or remove the record {record}" in msg

    # a record of another file (sha256) is ignored, with a warning: the config fits
    record.write_text(json.dumps({"architecture": {"encoder_depth": 2}, "sha256": "0" * 64}))
    with caplog.at_level(logging.WARNING, logger="persam.backbones.sam"):
        sam = _build("backbone=embedded", f"backbone.checkpoint={copy}")
    assert any("Ignoring the record" in w and str(record) in w for w in _warnings(caplog))
    assert sam.architecture["encoder_depth"] == 4


def test_a_decoder_head_count_that_cannot_be_told_is_refused_then_read_from_a_record(tmp_path):
    """The embedded decoder (width 128) is not SAM's: its heads are not in the shapes."""
    copy = tmp_path / "model.pth"
    shutil.copyfile(SHIPPED, copy)
    with pytest.raises(CheckpointError) as err:
        _build("backbone=vit_b", f"backbone.checkpoint={copy}")
    msg = str(err.value)
    assert str(copy) in msg and "backbone 'vit_b'" in msg and "head count" in msg
    assert str(tmp_path / "model.json") in msg and "backbone.decoder_num_heads=" in msg

    (tmp_path / "model.json").write_text(json.dumps({"architecture": {"decoder_num_heads": 4}}))
    sam = _build("backbone=vit_b", f"backbone.checkpoint={copy}")
    assert torch.equal(_predict(sam), _predict(_build()))


def test_an_unusable_state_dict_is_refused_clearly(tmp_path):
    cases = {
        "no_patch_embed.pth": (
            {"image_encoder.blocks.0.attn.qkv.weight": torch.zeros(3, 1)},
            "no parameter 'image_encoder.patch_embed.proj.weight'",
        ),
        "not_sam.pth": ({"encoder.weight": torch.zeros(2, 2)}, "does not fit backbone"),
    }
    state = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    del state["mask_decoder.iou_token.weight"]
    cases["no_iou_token.pth"] = (state, "missing mask_decoder.iou_token.weight")
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        torch.save(content, path)
        with pytest.raises(CheckpointError) as err:
            _build("backbone=embedded", f"backbone.checkpoint={path}")
        assert str(path) in str(err.value) and expected in str(err.value), str(err.value)
