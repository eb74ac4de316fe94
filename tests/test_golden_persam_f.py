"""PerSAM-F end to end (fit on the reference, then segment) against the official outputs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GOLDEN_OBJECTS, iou, rgb

from persam.model.encoder import Encoder
from persam.model.method import PerSAMF

pytestmark = [pytest.mark.golden, pytest.mark.slow]


@pytest.fixture(scope="module")
def persam_f(tiny_sam):
    return PerSAMF(tiny_sam, Encoder(tiny_sam))


@pytest.mark.parametrize("obj", GOLDEN_OBJECTS)
def test_persam_f_matches_official(golden, persam_f, obj):
    ref = np.load(golden / "reference" / "persam_f" / f"{obj}.npz")
    data = golden / "perseg-mini"
    target = persam_f.learn(
        rgb(data / "Images" / obj / "00.jpg"), rgb(data / "Annotations" / obj / "00.png")
    )
    np.testing.assert_allclose(
        target.location.numpy() / np.linalg.norm(target.location.numpy()),
        ref["target_feat"],
        atol=1e-4,
        rtol=0,
    )
    np.testing.assert_array_equal(target.ref_points, ref["ref_points"])
    np.testing.assert_allclose(target.mask_weights, ref["weights"], atol=1e-4, rtol=0)
    assert target.fit.losses.shape == (1000,)

    for nn in ("00", "01", "02"):
        pred = persam_f.segment(rgb(data / "Images" / obj / f"{nn}.jpg"), target)
        np.testing.assert_array_equal(pred.coords, ref[f"{nn}/points"])
        np.testing.assert_array_equal(pred.labels, [1])
        assert iou(pred.first_mask, ref[f"{nn}/weighted_mask"]) >= 0.99
        (mask1, best1), (mask2, best2) = pred.steps
        assert best1 == int(ref[f"{nn}/step1_best"])
        assert iou(mask1, ref[f"{nn}/step1_mask"]) >= 0.99
        assert best2 == int(ref[f"{nn}/step2_best"])
        assert iou(pred.mask, ref[f"{nn}/final_mask"]) >= 0.99
        png = rgb(golden / "reference" / "persam_f" / obj / f"{nn}.png").any(-1)
        assert iou(pred.mask, png) >= 0.99
