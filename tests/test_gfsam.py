"""GF-SAM and the DINOv2 features without the golden set: configuration, the method's API and
switches on the shipped embedded SAM, the DINOv2 loader (official key layout, SwiGLU, the
record beside a checkpoint) and its missing-dependency message."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from persam.backbones import dinov2
from persam.backbones.sam import CheckpointError, MissingDependencyError
from persam.model.cache import EmbeddingCache, module_fingerprint
from persam.model.decoder import decode
from persam.model.encoder import Encoder
from persam.model.features import SAMFeatures
from persam.model.gf_sam import GFSAM, EmptyReferenceMask, GFSAMPrediction


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose("config", overrides=["backbone.device=cpu", *overrides])


@pytest.fixture(scope="module")
def sam():
    return instantiate(_compose().backbone)


def _scene(shift: int, size=(120, 160)) -> tuple[np.ndarray, np.ndarray]:
    """A textured background with a red disc (its mask): the same object, moved."""
    rng = np.random.default_rng(0)
    h, w = size
    image = (rng.integers(60, 120, (h, w, 3))).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    mask = (yy - 60) ** 2 + (xx - 50 - shift) ** 2 < 25**2
    image[mask] = (220, 30, 30)
    return image, mask


def test_config_builds_gf_sam_with_sam_features(sam):
    """The root `features` group (features=sam on the command line wins over gf_sam's dinov2),
    built as persam.run builds it and handed to the method."""
    cfg = _compose("method=gf_sam", "features=sam")
    assert cfg.features.name == "sam" and "features" not in cfg.method
    encoder = Encoder(sam)
    features = instantiate(cfg.features)(encoder=encoder)
    method = instantiate(cfg.method, sam=sam, encoder=encoder, trainer=None, features=features)
    assert isinstance(method, GFSAM) and isinstance(method.features, SAMFeatures)
    assert method.features.encoder is method.encoder
    assert (method.max_points, method.points_per_batch, method.image_size) == (128, 64, 1024)


def test_config_dinov2_names_the_official_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("SAM_CHECKPOINT_DIR", str(tmp_path))
    cfg = _compose("method=gf_sam")
    assert cfg.features.name == "dinov2_vitl14"  # gf_sam's default features
    assert cfg.features.checkpoint == str(tmp_path / "dinov2_vitl14_pretrain.pth")
    with pytest.raises(InstantiationException, match="dinov2_vitl14_pretrain.pth"):
        instantiate(cfg.features)  # Hydra wraps the CheckpointError
    assert _compose().features.name == "sam"  # the default, for every other method


def test_random_dinov2_tokens():
    features = dinov2.dinov2_features("dinov2_vits14", checkpoint="random", device="cpu")
    image, _ = _scene(0)
    out = features(image)
    assert out.grid == (37, 37) and out.tokens.shape == (37 * 37, 384)
    assert torch.isfinite(out.tokens).all()
    again = dinov2.build_dinov2("dinov2_vits14", checkpoint="random", device="cpu")
    assert module_fingerprint(again) == module_fingerprint(features.model)  # seeded


def test_official_layout_swiglu_round_trip(tmp_path):
    """A SwiGLU DINOv2 (vitg14's layout) saved with Meta's key names loads back to the same
    tokens, its sizes read from the shapes and its heads from the record beside it."""
    torch.manual_seed(0)
    model = dinov2.build_vit(
        img_size=56, patch_size=14, embed_dim=64, depth=2, num_heads=2, ffn="swiglu"
    ).eval()
    state = {
        k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3"): v
        for k, v in model.state_dict().items()
    }
    state["mask_token"] = torch.zeros(1, 64)
    path = tmp_path / "small_swiglu.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="number of attention heads"):
        dinov2.build_dinov2("small_swiglu", checkpoint=path, device="cpu")
    path.with_suffix(".json").write_text(json.dumps({"architecture": {"num_heads": 2}}))
    features = dinov2.dinov2_features("small_swiglu", checkpoint=path, device="cpu")
    arch = features.model.architecture
    sizes = (arch["ffn"], arch["embed_dim"], arch["depth"], arch["img_size"])
    assert sizes == ("swiglu", 64, 2, 56)
    image, _ = _scene(0)
    x = features.preprocess(image)
    (expected,) = model.forward_intermediates(
        x, indices=1, norm=False, output_fmt="NLC", intermediates_only=True
    )
    torch.testing.assert_close(features(image).tokens, expected[0])


def test_missing_timm_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(MissingDependencyError) as info:
        dinov2.build_dinov2("dinov2_vits14", checkpoint="random", device="cpu")
    message = str(info.value)
    assert "\n" not in message and "pip install 'persam[dinov2]'" in message


def test_segment_api_and_switches(sam, tmp_path):
    """learn/segment as PerSAM's: a mask of the query's size, the selected masks as instances,
    the points in query pixels; every switch runs (SAM's own features, small working size)."""
    ref_image, ref_mask = _scene(0)
    query, query_mask = _scene(50)
    encoder = Encoder(sam, EmbeddingCache(tmp_path))  # the query is encoded once
    base = dict(encoder=encoder, features=None, image_size=256, max_points=16)
    method = GFSAM(sam, **base)
    target = method.learn(ref_image, ref_mask)
    assert target.shots == 1 and target.masks.shape == (1, 1, 256, 256)
    pred = method.segment(query, target)
    assert isinstance(pred, GFSAMPrediction)
    assert pred.mask.shape == query.shape[:2] and pred.mask.dtype == bool
    assert 1 <= len(pred.points) <= 16 and len(pred.labels) == len(pred.points)
    assert len(pred.instances) == pred.labels.sum() >= 1
    assert all((i <= pred.mask).all() for i in pred.instances)
    assert (pred.coords[:, 0] < query.shape[1]).all() and (pred.coords[:, 1] < query.shape[0]).all()
    iou = (pred.mask & query_mask).sum() / (pred.mask | query_mask).sum()
    assert iou > 0.5, iou
    for switch in (
        {"negative_filter": False},
        {"mask_growth": False},
        {"point_consistency": False},
        {"consistency_vote": False},
        {"fallback": False},
        {"max_points": 1},
    ):
        other = GFSAM(sam, **{**base, **switch}).segment(query, target)
        assert other.mask.shape == query.shape[:2], switch
    capped = GFSAM(sam, **{**base, "points_per_batch": 3}).segment(query, target)
    np.testing.assert_array_equal(capped.mask, pred.mask)  # batching changes nothing
    # k-shot: two references, one of them with an empty mask (kept empty: official)
    two = method.learn([ref_image, query], [ref_mask, np.zeros_like(ref_mask)])
    assert two.shots == 2 and not two.empty_reference
    assert method.segment(query, two).mask.shape == query.shape[:2]


def test_empty_references(sam):
    image, mask = _scene(0)
    empty = np.zeros_like(mask)
    method = GFSAM(sam, image_size=256, max_points=4)
    target = method.learn(image, empty)
    assert target.empty_reference and target.masks.sum() == 14 * 14
    assert target.warnings and "14 x 14" in target.warnings[0]
    with pytest.raises(EmptyReferenceMask):
        GFSAM(sam, image_size=256, empty_reference="raise").learn(image, empty)
    with pytest.raises(ValueError, match="empty_reference"):
        GFSAM(sam, empty_reference="skip")


def test_single_mask_decode_is_sams(sam):
    """`decoder.decode(multimask=False)`, GF-SAM's one mask per point, gives
    `SamPredictor.predict_torch(multimask_output=False)`'s masks, scores and logits bit for bit
    (a batch of points, each its own prompt)."""
    rng = np.random.default_rng(1)
    predictor = Encoder(sam).set_image(rng.integers(0, 255, (90, 150, 3), dtype=np.uint8))
    coords = rng.integers(0, 90, (5, 1, 2))
    labels = np.ones((5, 1), np.int64)
    prompts = (
        torch.as_tensor(predictor.transform.apply_coords(coords, (90, 150))).float(),
        torch.as_tensor(labels),
    )
    for logits in (True, False):
        with torch.no_grad():
            sams = predictor.predict_torch(*prompts, multimask_output=False, return_logits=logits)
        ours = decode(predictor, coords, labels, return_logits=logits, multimask=False)
        assert ours[0].shape == (5, 1, 90, 150)
        for a, b in zip(ours, sams, strict=True):
            np.testing.assert_array_equal(a, b.numpy())
