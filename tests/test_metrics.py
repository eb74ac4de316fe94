"""Unit tests for persam.metrics.image on hand-made masks with hand-counted expected values."""

from __future__ import annotations

import numpy as np
import pytest

from persam.metrics.image import ObjectMeter, mask_to_boundary, mean_over_objects


def square(h: int, w: int, top: int, left: int, size: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[top : top + size, left : left + size] = True
    return m


# ---------------------------------------------------------------- mask_to_boundary


def test_boundary_ring_of_square_d1() -> None:
    # 20x20 image: diagonal 28.28 -> d = round(0.566) = 1: a 10x10 square keeps an 8x8 core.
    m = square(20, 20, 5, 5, 10)
    b = mask_to_boundary(m)
    assert b.dtype == bool and b.shape == (20, 20)
    assert b.sum() == 100 - 8 * 8  # 36
    expected = m & ~square(20, 20, 6, 6, 8)
    np.testing.assert_array_equal(b, expected)


def test_boundary_ring_of_square_d2() -> None:
    # 64x64 image: diagonal 90.51 -> d = round(1.81) = 2: a 20x20 square keeps a 16x16 core.
    m = square(64, 64, 20, 20, 20)
    b = mask_to_boundary(m)
    assert b.sum() == 400 - 16 * 16  # 144
    np.testing.assert_array_equal(b, m & ~square(64, 64, 22, 22, 16))


def test_boundary_width_follows_dilation_ratio() -> None:
    m = square(64, 64, 20, 20, 20)
    # ratio 0.05 * 90.51 = 4.53 -> d = 5: core 10x10
    assert mask_to_boundary(m, dilation_ratio=0.05).sum() == 400 - 10 * 10
    # ratio 0 -> d clamped to 1: core 18x18
    assert mask_to_boundary(m, dilation_ratio=0.0).sum() == 400 - 18 * 18


def test_boundary_object_cut_by_image_border() -> None:
    # A 10x10 square in the top-left corner of a 64x64 image, d = 2.
    # With the 1-pixel zero padding the border sides erode too: core 6x6 -> ring 64.
    # (Without padding only two sides would erode: core 8x8 -> ring 36.)
    m = square(64, 64, 0, 0, 10)
    b = mask_to_boundary(m)
    assert b.sum() == 100 - 6 * 6
    assert b[0, :10].all() and b[:10, 0].all()


def test_boundary_of_full_and_empty_masks() -> None:
    full = np.ones((20, 20), dtype=bool)
    assert mask_to_boundary(full).sum() == 400 - 18 * 18  # the whole image frame, d=1
    assert mask_to_boundary(np.zeros((20, 20), dtype=bool)).sum() == 0


def test_boundary_accepts_uint8_masks() -> None:
    m = square(20, 20, 5, 5, 10).astype(np.uint8) * 255
    assert mask_to_boundary(m).sum() == 36


# ---------------------------------------------------------------- ObjectMeter


def test_offset_squares_iou_acc() -> None:
    # gt rows/cols 2..11, pred rows/cols 5..14: overlap 7x7 = 49, union 100 + 100 - 49 = 151.
    gt = square(20, 20, 2, 2, 10)
    pred = square(20, 20, 5, 5, 10)
    meter = ObjectMeter()
    meter.update(pred, gt)
    r = meter.result()
    assert r["n_images"] == 1
    assert r["iou"] == pytest.approx(49 / 151, abs=1e-9)
    assert r["acc"] == pytest.approx(49 / 100, abs=1e-9)


def test_boundary_iou_of_one_pixel_shift() -> None:
    # d = 1, so boundaries are the 1-pixel perimeters (36 px each) of the two 10x10 squares.
    # gt cols 2..11, pred cols 3..12, same rows 2..11: the perimeters share the top and bottom
    # rows at cols 3..11 (2 x 9 = 18 px) and nothing else -> biou = 18 / (36 + 36 - 18).
    gt = square(20, 20, 2, 2, 10)
    pred = np.zeros_like(gt)
    pred[2:12, 3:13] = True
    meter = ObjectMeter()
    meter.update(pred, gt)
    r = meter.result()
    assert r["biou"] == pytest.approx(18 / 54, abs=1e-9)
    assert r["iou"] == pytest.approx(90 / 110, abs=1e-9)


def test_perfect_prediction_scores_one() -> None:
    gt = square(30, 40, 3, 7, 12)
    meter = ObjectMeter()
    meter.update(gt.copy(), gt)
    r = meter.result()
    for key in ("iou", "biou", "acc"):
        assert r[key] == pytest.approx(1.0, abs=1e-9)


def test_aggregation_is_sum_over_sum_not_mean_of_ratios() -> None:
    meter = ObjectMeter()
    # image A (20x20, d=1): perfect 10x10 square: inter 100, union 100, gt 100, boundary 36/36.
    a = square(20, 20, 5, 5, 10)
    meter.update(a, a)
    # image B (20x20, d=1): gt and pred are disjoint 2x2 squares: inter 0, union 8, gt 4;
    # a 2x2 square is all boundary: boundary inter 0, boundary union 8.
    meter.update(square(20, 20, 0, 0, 2), square(20, 20, 15, 15, 2))
    r = meter.result()
    assert r["n_images"] == 2
    assert r["iou"] == pytest.approx(100 / 108, abs=1e-9)
    assert r["acc"] == pytest.approx(100 / 104, abs=1e-9)
    assert r["biou"] == pytest.approx(36 / 44, abs=1e-9)
    # the mean of per-image ratios would be 0.5 for every metric
    assert abs(r["iou"] - 0.5) > 0.3


def test_images_of_different_sizes_in_one_object() -> None:
    meter = ObjectMeter()
    meter.update(square(20, 20, 2, 2, 10), square(20, 20, 5, 5, 10))  # 49 / 151
    meter.update(square(30, 50, 0, 0, 5), square(30, 50, 0, 0, 5))  # 25 / 25
    assert meter.result()["iou"] == pytest.approx((49 + 25) / (151 + 25), abs=1e-9)


def test_empty_union_is_zero_not_nan() -> None:
    empty = np.zeros((8, 8), dtype=bool)
    meter = ObjectMeter()
    meter.update(empty, empty)
    r = meter.result()
    assert r["iou"] == 0.0 and r["acc"] == 0.0 and r["biou"] == 0.0


def test_shape_mismatch_raises_with_both_shapes() -> None:
    meter = ObjectMeter()
    with pytest.raises(ValueError) as exc:
        meter.update(np.zeros((10, 12), dtype=bool), np.zeros((12, 10), dtype=bool))
    assert "(10, 12)" in str(exc.value) and "(12, 10)" in str(exc.value)
    assert meter.n_images == 0


def test_non_2d_mask_raises() -> None:
    with pytest.raises(ValueError):
        ObjectMeter().update(np.zeros((4, 4, 3), dtype=bool), np.zeros((4, 4, 3), dtype=bool))


def test_result_without_images_raises() -> None:
    with pytest.raises(ValueError):
        ObjectMeter().result()


# ---------------------------------------------------------------- mean_over_objects


def test_mean_over_objects_is_plain_mean() -> None:
    results = [
        {"iou": 0.5, "biou": 0.25, "acc": 1.0, "n_images": 10},
        {"iou": 1.0, "biou": 0.75, "acc": 0.5, "n_images": 1},
    ]
    m = mean_over_objects(results)
    assert m == pytest.approx({"miou": 0.75, "mbiou": 0.5, "macc": 0.75})


def test_mean_over_objects_empty_raises() -> None:
    with pytest.raises(ValueError):
        mean_over_objects([])
