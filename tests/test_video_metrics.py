"""J&F (persam/metrics/video.py) on hand-made masks, and against vos-benchmark's implementation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from persam.metrics.video import (
    SequenceScorer,
    boundary_f,
    boundary_map,
    boundary_tolerance,
    disk,
    overall,
    region_similarity,
    statistics,
)


def square(h: int, w: int, top: int, left: int, size: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[top : top + size, left : left + size] = True
    return m


def test_j_counts_and_empty_cases() -> None:
    a = square(10, 10, 2, 2, 4)
    b = square(10, 10, 2, 4, 4)  # shifted 2 columns: 8 shared pixels, union 24
    assert region_similarity(a, b) == pytest.approx(8 / 24)
    assert region_similarity(a, a) == 1.0
    empty = np.zeros((10, 10), bool)
    assert region_similarity(empty, empty) == 1.0  # both empty: 1 (DAVIS)
    assert region_similarity(a, empty) == 0.0


def test_j_ignores_void_pixels() -> None:
    gt = square(10, 10, 2, 2, 4)
    void = square(10, 10, 6, 6, 3)
    pred = gt | void
    assert region_similarity(pred, gt) < 1.0
    assert region_similarity(pred, gt, void) == 1.0


def test_boundary_is_the_ring_shifted_towards_the_origin() -> None:
    # The boundary of the 3x3 square at rows/cols 2..4 is the one-pixel ring of the 4x4 square
    # at rows/cols 1..4 (half a pixel towards the origin), 16 - 4 = 12 pixels.
    b = boundary_map(square(8, 8, 2, 2, 3))
    ring = square(8, 8, 1, 1, 4) & ~square(8, 8, 2, 2, 2)
    np.testing.assert_array_equal(b, ring)
    assert b.sum() == 12


def test_boundary_matches_davis_seg2bmap_on_random_masks() -> None:
    from vos_benchmark.utils import _seg2bmap

    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = rng.integers(5, 40, 2)
        m = rng.random((h, w)) < rng.uniform(0.1, 0.9)
        np.testing.assert_array_equal(boundary_map(m), _seg2bmap(m))


def test_tolerance_is_ceil_of_0008_diagonal() -> None:
    assert boundary_tolerance((480, 854)) == 8  # 0.008 * 979.6 = 7.84
    assert boundary_tolerance((240, 400)) == 4  # 0.008 * 466.5 = 3.73
    assert boundary_tolerance((100, 100)) == 2  # 0.008 * 141.4 = 1.13
    np.testing.assert_array_equal(
        disk(2),
        [
            [0, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 0, 0],
        ],
    )


def test_f_within_and_beyond_the_tolerance() -> None:
    gt = square(100, 100, 30, 30, 30)
    assert boundary_f(gt, gt) == 1.0
    # radius 2 px: a 2-px shift keeps every boundary pixel matched, a 3-px shift does not
    assert boundary_f(square(100, 100, 30, 32, 30), gt) == 1.0
    f3 = boundary_f(square(100, 100, 30, 33, 30), gt)
    assert 0.5 < f3 < 1.0
    far = square(100, 100, 0, 0, 10)
    assert boundary_f(far, gt) == 0.0


def test_f_empty_cases() -> None:
    gt = square(50, 50, 10, 10, 10)
    empty = np.zeros((50, 50), bool)
    assert boundary_f(empty, empty) == 1.0  # no boundary on either side: P = R = 1
    assert boundary_f(empty, gt) == 0.0  # P = 1, R = 0
    assert boundary_f(gt, empty) == 0.0  # P = 0, R = 1


def test_statistics_mean_recall_decay_by_hand() -> None:
    values = [1.0, 1.0, 0.9, 0.8, 0.6, 0.4, 0.2, 0.0]
    mean, recall, decay = statistics(values)
    assert mean == pytest.approx(4.9 / 8)
    assert recall == pytest.approx(5 / 8)  # > 0.5: 1, 1, .9, .8, .6
    # bins: round(linspace(1, 8, 5)) - 1 = [0, 2, 3, 5, 7] -> first v[0..2], last v[5..7]
    assert decay == pytest.approx((1 + 1 + 0.9) / 3 - (0.4 + 0.2 + 0.0) / 3)


def test_first_and_last_frames_are_not_scored() -> None:
    gt = np.zeros((4, 20, 20), np.uint8)
    gt[:, 5:10, 5:10] = 1
    pred = gt.copy()
    pred[0] = 0  # frame 0 and the last frame wrong: not counted
    pred[3] = 0
    pred[2, 5:10, 5:10] = 0  # frame 2 misses the object: J = 0, F = 0
    scorer = SequenceScorer([1], 4)
    for i in range(4):
        scorer.add(i, pred[i], gt[i])
    obj = scorer.result()["objects"]["1"]
    assert obj["j_mean"] == pytest.approx(0.5)
    assert obj["f_mean"] == pytest.approx(0.5)
    assert obj["j_recall"] == pytest.approx(0.5)


def test_absent_object_scores_one_when_correctly_absent() -> None:
    gt = np.zeros((5, 20, 20), np.uint8)
    gt[:, 2:6, 2:6] = 1
    gt[2, 2:6, 2:6] = 0  # the object is gone in frame 2
    scorer = SequenceScorer([1], 5)
    for i in range(5):
        scorer.add(i, gt[i], gt[i])
    assert scorer.result()["jf"] == 1.0


def test_overall_is_a_mean_over_objects_not_sequences() -> None:
    seqs = {
        "a": {"objects": {"1": {"j_mean": 1.0, "f_mean": 1.0}}},
        "b": {"objects": {str(k): {"j_mean": 0.0, "f_mean": 0.0} for k in (1, 2, 3)}},
    }
    result = overall(seqs)
    assert result["j_mean"] == pytest.approx(0.25)
    assert result["jf"] == pytest.approx(0.25)
    assert result["n_scored_objects"] == 4


def _blobs(rng, h, w, n):
    labels = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for k in range(1, n + 1):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, min(h, w) / 3)
        labels[(yy - cy) ** 2 + ((xx - cx) * rng.uniform(0.6, 1.4)) ** 2 < r**2] = k
    return labels


def test_matches_vos_benchmark_on_random_label_maps() -> None:
    from vos_benchmark.evaluator import Evaluator

    rng = np.random.default_rng(1)
    h, w, n, frames = 60, 90, 3, 7
    gt = [_blobs(rng, h, w, n) for _ in range(frames)]
    for g in gt:  # every object present in every frame (vos-benchmark only scores those seen)
        for k in range(1, n + 1):
            g[2 * k, 2 * k] = k
    pred = [_blobs(rng, h, w, n) for _ in range(frames)]
    ours = SequenceScorer(range(1, n + 1), frames)
    theirs = Evaluator()
    for i in range(frames):
        ours.add(i, pred[i], gt[i])
        if 0 < i < frames - 1:
            theirs.feed_frame(pred[i], gt[i])
    j, f = theirs.conclude()
    result = ours.result()["objects"]
    for k in range(1, n + 1):
        assert result[str(k)]["j_mean"] * 100 == pytest.approx(j[k], abs=1e-9)
        assert result[str(k)]["f_mean"] * 100 == pytest.approx(f[k], abs=1e-9)


@pytest.mark.golden
@pytest.mark.parametrize("method", ["persam", "persam_f"])
def test_reproduces_golden_jf_from_golden_pngs(golden, method) -> None:
    """The jf.json of the official outputs (vos-benchmark 0.1.0), from their PNGs."""
    video = golden / "video"
    ref = json.loads((video / "reference" / method / "jf.json").read_text())
    sequences = {}
    for seq, values in ref["sequences"].items():
        gt_paths = sorted((video / "davis-mini" / "Annotations" / "480p" / seq).glob("*.png"))
        gts = [np.array(Image.open(p)) for p in gt_paths]
        ids = [int(v) for v in np.unique(gts[0]) if v]
        scorer = SequenceScorer(ids, len(gts))
        for i, g in enumerate(gts):
            png = video / "reference" / method / seq / f"{i:05d}.png"
            scorer.add(i, g if i == 0 else np.array(Image.open(png)), g)
        sequences[seq] = scorer.result()
        assert sequences[seq]["jf"] * 100 == pytest.approx(values["J&F"], abs=1e-9)
        for obj, v in values["objects"].items():
            assert sequences[seq]["objects"][obj]["j_mean"] * 100 == pytest.approx(v["J"], abs=1e-9)
            assert sequences[seq]["objects"][obj]["f_mean"] * 100 == pytest.approx(v["F"], abs=1e-9)
    assert overall(sequences)["jf"] * 100 == pytest.approx(ref["overall"]["J&F"], abs=1e-9)
