"""PerSAM and PerSAM-F on other features (docs/features.md): with features=None (or SAM's own,
the root `features=sam`) exactly today's method; with a random tiny DINOv2 the target and the
similarity map come from its tokens, the points land inside the image, and the method runs end
to end on synthetic images (non-square, so the square resize and SAM's padding differ)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from persam.backbones.dinov2 import DINOv2Features, build_vit
from persam.backbones.sam import build_sam
from persam.model import location_prior
from persam.model.encoder import Encoder
from persam.model.features import SAMFeatures
from persam.model.method import PerSAM, PerSAMF
from tests.helpers import SMALL_ARCH

FIT = dict(scale_weights=dict(steps=3, fused="eager"))


@pytest.fixture(scope="module")
def sam():
    return build_sam(name="tiny", checkpoint="random", device="cpu", **SMALL_ARCH)


@pytest.fixture(scope="module")
def dinov2() -> DINOv2Features:
    """A random tiny DINOv2 (timm, DINOv2's layout): 70 x 70 input, a 5 x 5 grid."""
    torch.manual_seed(0)
    vit = build_vit(img_size=70, patch_size=14, embed_dim=32, depth=1, num_heads=2).eval()
    return DINOv2Features(vit, name="dinov2_tiny_random", input_size=70)


def _image(seed: int, size=(96, 144)):
    """A bright disc on noise and its annotation (H, W, 3), R = 128 inside."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    cy, cx = int(rng.integers(25, h - 25)), int(rng.integers(25, w - 25))
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 18**2
    img[disc] = (250, 200, 40)
    ann = np.zeros((h, w, 3), np.uint8)
    ann[disc, 0] = 128
    return img, ann


def _same(a, b) -> None:
    assert np.array_equal(a.mask, b.mask)
    assert np.array_equal(a.coords, b.coords) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.first_logits, b.first_logits)
    assert (a.attn_sim is None) == (b.attn_sim is None)
    if a.attn_sim is not None:
        assert torch.equal(a.attn_sim, b.attn_sim)


@pytest.mark.parametrize("cls,options", [(PerSAM, {}), (PerSAMF, FIT)])
def test_no_features_is_todays_method(sam, cls, options):
    """features=None and SAM's own features (the root group's default) give bit-identical
    targets and predictions to a method built without the argument."""
    (ref, ann), (query, _) = _image(1), _image(2)
    plain = cls(sam, **options)
    outs = []
    for method in (
        plain,
        cls(sam, features=None, **options),
        cls(sam, features=SAMFeatures(Encoder(sam)), **options),
        cls(sam, features=lambda encoder: SAMFeatures(encoder), **options),  # a partial
    ):
        assert method.features is None
        torch.manual_seed(0)
        target = method.learn_annotations(ref, ann)
        outs.append((target, method.segment(query, target)))
    for target, pred in outs[1:]:
        assert torch.equal(target.location, outs[0][0].location)
        assert torch.equal(target.embedding, outs[0][0].embedding)
        if target.mask_weights is not None:
            assert np.array_equal(target.mask_weights, outs[0][0].mask_weights)
        _same(pred, outs[0][1])


def test_feature_map_is_carried_through_the_original_frame():
    """A token map peaked at one grid cell peaks inside that cell's image region, whatever the
    image's aspect ratio (the grid covers the square-resized whole image)."""
    grid, size = (5, 5), (60, 200)  # a wide image: the square resize squeezes x
    tokens = torch.eye(25)[:, :8].clone()
    tokens[:, :] = 0.01
    tokens[13, 0] = 1.0  # cell (row 2, column 3)
    target = torch.zeros(8)
    target[0] = 1.0
    sim = location_prior.feature_similarity_map(tokens, grid, target, size)
    assert sim.shape == size
    coords, labels = location_prior.select_points(sim, negative=False)
    x, y = coords[0]
    assert 3 * 200 / 5 <= x < 4 * 200 / 5 and 2 * 60 / 5 <= y < 3 * 60 / 5


def test_mask_on_feature_grid_keeps_small_objects():
    ann = np.zeros((100, 100, 3), np.uint8)
    ann[51, 52, 0] = 128  # one pixel
    grid = location_prior.mask_on_feature_grid(ann, (37, 37))
    # adaptive pooling's bins overlap by a pixel at their edges: one pixel is in 1 to 4 cells
    assert 1 <= int(grid.sum()) <= 4 and grid[18:20, 19:21].any()
    assert not grid[:17].any() and not grid[21:].any()


def test_attention_map_in_sam_frame_pads_low(sam):
    """The attention guidance is placed in SAM's padded frame: a wide image leaves the bottom
    rows of SAM's grid padding, which get the lowest attention."""
    img, _ = _image(3, size=(56, 144))
    predictor = Encoder(sam).set_image(img)
    sim = torch.rand(56, 144)
    attn = location_prior.attention_map_in_sam_frame(sim, predictor)
    h, w = predictor.features.shape[-2:]
    assert attn.shape == (1, 1, 1, h * w)
    grid = attn.reshape(h, w)
    rows = int(np.ceil(predictor.input_size[0] / sam.image_encoder.img_size * h))
    assert rows < h
    assert float(grid[rows + 1 :].max()) <= float(grid[: rows - 1].min()) + 1e-6


@pytest.mark.parametrize("cls,options", [(PerSAM, {}), (PerSAMF, FIT), (PerSAM, {"instances": 2})])
def test_dinov2_features_end_to_end(sam, dinov2, cls, options):
    """A random tiny DINOv2: the target is DINOv2's (its width), the semantic prompt SAM's, the
    points inside the image, masks of the query's size; one and two references."""
    (ref1, ann1), (ref2, ann2) = _image(4), _image(5, size=(120, 90))
    method = cls(sam, features=dinov2, **options)
    assert method.features is dinov2
    for refs, anns in (([ref1], [ann1]), ([ref1, ref2], [ann1, ann2])):
        target = method.learn_annotations(refs, anns)
        assert target.location.shape == (32,)  # DINOv2's width
        assert target.embedding.shape == (sam.prompt_encoder.embed_dim,)  # SAM's
        for seed, size in ((6, (96, 144)), (7, (150, 80))):
            query, _ = _image(seed, size=size)
            pred = method.segment(query, target)
            assert pred.mask.shape == size
            h, w = size
            assert len(pred.coords)
            assert (pred.coords[:, 0] >= 0).all() and (pred.coords[:, 0] < w).all()
            assert (pred.coords[:, 1] >= 0).all() and (pred.coords[:, 1] < h).all()
            if method.guided_attention:
                grid = sam.image_encoder.img_size // 16
                assert pred.attn_sim.shape == (1, 1, 1, grid * grid)


def test_dinov2_factory_gets_the_encoder(sam, dinov2):
    """A config group's partial (`_partial_`) is called with the method's encoder."""
    seen = {}

    def factory(encoder):
        seen["encoder"] = encoder
        return dinov2

    method = PerSAM(sam, features=factory)
    assert method.features is dinov2 and seen["encoder"] is method.encoder
