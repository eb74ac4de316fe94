"""Backbone registry: real checkpoint loading and its errors."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from persam.backbones.sam import CheckpointError, build_sam
from persam.conf import CONFIG_DIR


def test_tiny_loads_golden_checkpoint(golden, tiny_arch):
    sam = build_sam(name="tiny", checkpoint=golden / "tiny_sam.pth", device="cpu", **tiny_arch)
    state = torch.load(golden / "tiny_sam.pth", map_location="cpu", weights_only=True)
    for key in ("image_encoder.patch_embed.proj.weight", "mask_decoder.iou_token.weight"):
        assert torch.equal(sam.state_dict()[key], state[key])
    assert not any(p.requires_grad for p in sam.parameters())
    assert not sam.training


def test_tiny_config_is_golden_architecture(golden, tiny_arch):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["backbone=tiny"])
    for key, value in tiny_arch.items():
        assert cfg.backbone[key] == value, key
    sam = instantiate(cfg.backbone, checkpoint=str(golden / "tiny_sam.pth"), device="cpu")
    assert sam.image_encoder.img_size == 1024


def test_random_init_is_seeded():
    kw = dict(
        name="tiny",
        device="cpu",
        encoder_embed_dim=32,
        encoder_depth=1,
        encoder_num_heads=1,
        encoder_global_attn_indexes=[0],
    )
    a, b, c = build_sam(seed=1, **kw), build_sam(seed=1, **kw), build_sam(seed=2, **kw)
    wa, wb, wc = (m.mask_decoder.iou_token.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_missing_checkpoint_says_where_to_download(tmp_path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "config", overrides=["backbone=vit_b", f"backbone.checkpoint={tmp_path}/nope.pth"]
        )
    with pytest.raises(InstantiationException) as err:
        instantiate(cfg.backbone, device="cpu")
    assert isinstance(err.value.__cause__, CheckpointError)
    msg = str(err.value.__cause__)
    assert "nope.pth" in msg and "sam_vit_b_01ec64.pth" in msg
    assert (
        "https://dl.fbaipublicfiles.com/segment_anything/" in msg and "backbone.checkpoint=" in msg
    )


def test_checkpoint_of_another_architecture_builds_its_own(golden, caplog):
    """The configured width does not fit: the golden checkpoint's own (its shapes and
    tiny_sam.json beside it) is built, with a warning; the weights are the file's."""
    with caplog.at_level("WARNING", logger="persam.backbones.sam"):
        sam = build_sam(
            name="tiny",
            checkpoint=golden / "tiny_sam.pth",
            device="cpu",
            encoder_embed_dim=64,
            encoder_depth=2,
            encoder_num_heads=2,
            encoder_global_attn_indexes=[1],
        )
    assert "does not fit backbone 'tiny' as configured (encoder_embed_dim 64 -> 96)" in caplog.text
    assert str(golden / "tiny_sam.json") in caplog.text
    state = torch.load(golden / "tiny_sam.pth", map_location="cpu", weights_only=True)
    assert all(torch.equal(sam.state_dict()[k], v) for k, v in state.items())


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pth.*corrupt"):
        build_sam(
            name="vit_b",
            checkpoint=bad,
            device="cpu",
            encoder_embed_dim=32,
            encoder_depth=1,
            encoder_num_heads=1,
            encoder_global_attn_indexes=[0],
        )
