"""Tracked mode: the official defects fixed (identity, lost objects, empty masks, the largest
mask), on the embedded model and the synthetic videos; and the official quirks kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from persam.conf import CONFIG_DIR
from persam.data.synthetic_video import SyntheticVideoDataset
from persam.model.decoder import decode
from persam.model.encoder import Encoder
from persam.model.method import PerSAM, PerSAMF
from persam.model.refine import EmptyMaskError, cascaded_refinement
from persam.tasks.video.policy import VideoPolicy
from persam.tasks.video.segmenter import (
    VideoSegmenter,
    merge_logits,
    official_handover,
    tracked_handover,
)


@pytest.fixture(scope="module")
def embedded():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("video", overrides=["backbone=embedded", "backbone.device=cpu"])
    return instantiate(cfg.backbone)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return SyntheticVideoDataset(tmp_path_factory.mktemp("videos"), num_sequences=2)


def _run(sam, sequence, policy, method=None):
    method = method or PerSAM(sam, Encoder(sam))
    segmenter = VideoSegmenter(method, policy)
    labels0, _ = sequence.first
    trace: dict = {}
    segmenter.recorder = trace  # the stages, observed (not a production argument)
    objects = segmenter.learn(sequence.frame(0), labels0)
    frames = ((i, sequence.frame(i)) for i in range(1, len(sequence)))
    return list(segmenter.run(objects, labels0, frames)), trace, objects


def test_merge_background_wins_when_no_logit_is_positive_and_ties_go_first() -> None:
    a = np.array([[2.0, -1.0, 0.5, 0.0]], np.float32)
    b = np.array([[1.0, -2.0, 0.5, 3.0]], np.float32)
    np.testing.assert_array_equal(merge_logits([a, b], [4, 7], (1, 4)), [[4, 0, 4, 7]])


def test_official_handover_mispairs_when_a_label_vanishes_tracked_keeps_ids() -> None:
    label_map = np.zeros((6, 6), np.uint8)
    label_map[0:2, 0:2] = 2  # object 1 vanished; 2 and 3 remain
    label_map[4:6, 4:6] = 3
    official = official_handover(label_map)
    assert len(official) == 2  # three objects, two slots from now on
    np.testing.assert_array_equal(official[0], label_map == 2)  # object 1 gets 2's box
    np.testing.assert_array_equal(official[1], label_map == 3)  # object 2 gets 3's box
    tracked = tracked_handover(label_map, [1, 2, 3])
    assert tracked[1] is None
    np.testing.assert_array_equal(tracked[2], label_map == 2)
    np.testing.assert_array_equal(tracked[3], label_map == 3)


def test_refinement_on_an_empty_mask_raises_or_runs_without_a_box(embedded) -> None:
    encoder = Encoder(embedded)
    predictor = encoder.set_image(np.full((64, 80, 3), 90, np.uint8))
    empty = np.zeros((64, 80), bool)
    low = np.zeros((1, 64, 64), np.float32)
    points, labels = np.array([[40, 30]]), np.array([1])
    with pytest.raises(EmptyMaskError, match="empty"):
        cascaded_refinement(
            predictor, points, labels, empty, low, box_on_first=True, on_empty="raise"
        )
    result = cascaded_refinement(
        predictor, points, labels, empty, low, box_on_first=True, keep_logits=True
    )
    assert result.boxes[0] is None and result.warnings
    assert result.high_res.shape == (64, 80)
    np.testing.assert_array_equal(result.mask, result.high_res > 0)


@pytest.mark.parametrize("threads", [1, 2])
def test_decode_gives_sams_masks_bit_for_bit_and_best_only_its_best(embedded, threads) -> None:
    """`decode` runs SAM's decoder and upsampling itself (three masks per call; the refinement
    passes only each prompt's best mask): the values must be `SamPredictor.predict_torch`'s
    (PyTorch's CPU interpolation picks its kernel by the channel and thread counts), for 1, 2
    and 4 objects in one call."""
    rng = np.random.default_rng(0)
    predictor = Encoder(embedded).set_image(rng.integers(0, 255, (90, 150, 3), dtype=np.uint8))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for b in (1, 2, 4):
            coords = rng.integers(0, 90, (b, 2, 2))
            labels = np.ones((b, 2), np.int64)
            boxes = np.array([[10, 5, 120, 80]] * b)
            low_in = rng.normal(size=(b, 1, 64, 64)).astype(np.float32)
            prompts = (
                torch.as_tensor(predictor.transform.apply_coords(coords, (90, 150))).float(),
                torch.as_tensor(labels),
                torch.as_tensor(predictor.transform.apply_boxes(boxes, (90, 150))).float()[:, None],
                torch.as_tensor(low_in),
            )
            for logits in (True, False):
                with torch.no_grad():
                    sams = predictor.predict_torch(*prompts, return_logits=logits)
                full, scores, low = decode(predictor, coords, labels, boxes, low_in, logits)
                for ours, theirs in zip((full, scores, low), sams, strict=True):
                    np.testing.assert_array_equal(ours, theirs.numpy())
                best, scores_b, low_b = decode(
                    predictor, coords, labels, boxes, low_in, logits, best_only=True
                )
                assert best.shape == (b, 90, 150)
                np.testing.assert_array_equal(best, full[np.arange(b), scores.argmax(1)])
                np.testing.assert_array_equal(scores_b, scores)
                np.testing.assert_array_equal(low_b, low)
    finally:
        torch.set_num_threads(before)


def test_tracked_keeps_identity_through_exit_and_return(embedded, videos) -> None:
    seq = videos.sequence("exit-return")
    outputs, trace, _ = _run(embedded, seq, VideoPolicy(mode="tracked", true_largest=True))
    gone = [i for i in range(1, len(seq)) if 1 not in seq.annotation(i)]
    back = [i for i in range(gone[-1] + 1, len(seq))]
    assert gone and back
    for out in outputs:
        gt = seq.annotation(out.index)
        if out.index in gone:
            assert 1 not in out.labels, f"frame {out.index}: object 1 is out of the frame"
        else:
            inter = ((out.labels == 1) & (gt == 1)).sum()
            union = ((out.labels == 1) | (gt == 1)).sum()
            assert inter / union > 0.6, f"frame {out.index}: object 1 (IoU {inter / union:.2f})"
        assert 2 in out.labels  # the other object keeps its own id throughout
    # true largest (switched on here): the pick is the mask with the most pixels
    for key, value in trace.items():
        if key.endswith("/large_index"):
            assert value == int(np.argmax(trace[key.replace("large_index", "step1_mask_pixels")]))


def test_official_keeps_segmenting_an_object_that_left(embedded, videos) -> None:
    """The scripts have no notion of absence: object 1 is painted somewhere while it is out."""
    seq = videos.sequence("exit-return")
    outputs, trace, _ = _run(embedded, seq, VideoPolicy(mode="official"))
    gone = [i for i in range(1, len(seq)) if 1 not in seq.annotation(i)]
    assert all(1 in outputs[i - 1].labels for i in gone)
    for key, value in trace.items():
        if key.endswith("/large_index"):
            pixels = trace[key.replace("large_index", "step1_mask_pixels")]
            assert value == int(np.argmax((pixels % 256).astype(np.uint8)))


def test_persam_f_empty_mixed_mask_falls_back_to_the_best_scored_mask(embedded, videos) -> None:
    """Official quirk: an empty mixed mask takes the step-1 mask of highest score * v0 for the
    box (with v0 = 0, the first mask)."""
    seq = videos.sequence("crossing")
    base = PerSAM(embedded, Encoder(embedded))
    labels0, _ = seq.first
    objects = VideoSegmenter(base, VideoPolicy(mode="official")).learn(seq.frame(0), labels0)
    for obj in objects:
        obj.weights = np.zeros(3, np.float32)
    segmenter = VideoSegmenter(PerSAMF(embedded, Encoder(embedded)), VideoPolicy("official"))
    trace: dict = {}
    segmenter.recorder = trace
    out = next(segmenter.run(objects, labels0, [(1, seq.frame(1))]))
    assert trace["f01/obj1/step1_fallback"] is True
    assert not trace["f01/obj1/step1_mixed_mask"].any()
    assert out.labels.shape == labels0.shape
