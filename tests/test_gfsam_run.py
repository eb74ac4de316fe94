"""GF-SAM through the framework: the acceptance command on the golden set (the official
loader's episodes, masks and numbers), the few-shot protocols (official, persam, a replayed
episodes.json), and method=gf_sam on the objects task and on a video."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from persam.data.fewshot import FSS1000Dataset
from persam.data.perseg import DataError
from tests.helpers import run_in_process

# A random DINOv2 and a small working size: the runs only exercise the wiring.
RANDOM_DINOV2 = ["features.name=dinov2_vits14", "features.checkpoint=random"]


def _golden_overrides(golden: Path, shots: int) -> list[str]:
    fss = golden / "data" / "FSS-1000"
    return [
        "method=gf_sam",
        "data=fss1000",
        f"data.root={fss / 'data'}",
        f"data.split_file={fss / 'splits' / 'test.txt'}",
        f"data.shots={shots}",
        "data.episodes=12",
        f"backbone.checkpoint={golden / 'sam.pth'}",
        "features=dinov2",
        f"features.checkpoint={golden / 'dinov2.pth'}",
        "logger=none",
        "progress=false",
        "overlays=false",
    ]


def _unpack(npz) -> np.ndarray:
    h, w = (int(v) for v in npz["pred_mask_shape"])
    return np.unpackbits(npz["pred_mask_packed"])[: h * w].reshape(h, w).astype(bool)


@pytest.mark.slow
@pytest.mark.parametrize("shots", [1, 2])
def test_acceptance_on_the_golden_set(golden_gfsam, tmp_path, shots):
    """The acceptance command: the official episodes in order, every mask 1024 x 1024 with
    IoU >= 0.99 against the official prediction, mIoU over the classes present and FB-IoU within
    0.5 points of the official figures."""
    ref = golden_gfsam / "reference" / f"{shots}shot"
    summary = json.loads((ref / "summary.json").read_text())
    run_dir = tmp_path / "run"
    metrics = run_in_process(_golden_overrides(golden_gfsam, shots), run_dir)

    rows = list(csv.DictReader((run_dir / "episodes.csv").open()))
    assert list(rows[0]) == ["episode", "class", "query", "supports", "iou"]
    strip = lambda p: p.split("FSS-1000/data/", 1)[1]  # noqa: E731
    expected = [
        (strip(e["query"]), [strip(s) for s in e["supports"]]) for e in summary["episodes_detail"]
    ]
    assert [(r["query"], r["supports"].split(";")) for r in rows] == expected

    ious = []
    for i, row in enumerate(rows):
        mask = cv2.imread(str(run_dir / "masks" / "episodes" / f"{row['episode']}.png"), 0)
        assert mask.shape == (1024, 1024)
        mask = mask > 0
        official = _unpack(np.load(ref / f"{i:03d}.npz"))
        ious.append((mask & official).sum() / max((mask | official).sum(), 1))
    assert sum(iou < 0.99 for iou in ious) <= 1 and min(ious) >= 0.95, ious

    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["miou"] == pytest.approx(metrics["miou"])
    assert 100 * saved["miou"] == pytest.approx(summary["miou_over_seen_classes"], abs=0.5)
    assert 100 * saved["fbiou"] == pytest.approx(summary["fb_iou_official"], abs=0.5)


# -- protocols ---------------------------------------------------------------------------------
def _fss(root: Path, classes=("b_cls", "a_cls"), n=10, size=(40, 60)) -> Path:
    """A tiny FSS-1000 folder: n images per class, 1.jpg ... n.jpg with their png masks."""
    rng = np.random.default_rng(0)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for k in range(1, n + 1):
            img = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            mask = np.zeros(size, np.uint8)
            mask[5:25, 10 + k : 30 + k] = 255
            cv2.imwrite(str(root / cls / f"{k}.jpg"), img)
            cv2.imwrite(str(root / cls / f"{k}.png"), mask)
    (root / "test.txt").write_text("".join(f"{c}\n" for c in classes))
    return root


def test_official_protocol_is_hsnets_loader(tmp_path):
    """Queries in dataset order (classes sorted, files 1, 10, 2, ...), supports <k>.jpg from
    numpy's legacy generator seeded 0, redrawn while equal to the query, not de-duplicated;
    images and masks at 1024 x 1024."""
    root = _fss(tmp_path / "fss")
    ds = FSS1000Dataset(root, root / "test.txt", shots=2, episodes=None, protocol="official")
    episodes = ds.episodes()
    order = [1, 10, *range(2, 10)]
    assert [e.query for e in episodes] == [
        f"{c}/{k}.jpg" for c in ("a_cls", "b_cls") for k in order
    ]
    rs = np.random.RandomState(0)
    for e in episodes:
        supports = []
        while len(supports) < 2:
            k = rs.choice(range(1, 11), 1, replace=False)[0]
            if f"{e.cls}/{k}.jpg" != e.query:
                supports.append(f"{e.cls}/{k}.jpg")
        assert list(e.supports) == supports
    image, mask = ds.load(episodes[0].query, episodes[0].cls)
    assert image.shape == (1024, 1024, 3) and mask.shape == (1024, 1024) and mask.dtype == bool
    assert (
        FSS1000Dataset(root, root / "test.txt", episodes=3, protocol="official").episodes()[2].query
        == "a_cls/2.jpg"
    )


def test_persam_protocol_keeps_the_seeded_draw(tmp_path):
    """protocol=persam is the draw of before: a seeded permutation of the queries, k distinct
    other supports, images at their own size."""
    root = _fss(tmp_path / "fss", n=6)
    ds = FSS1000Dataset(root, root / "test.txt", shots=2, episodes=15, seed=3, protocol="persam")
    rng = np.random.default_rng(3)
    queries = [(c, p) for c in ds.classes for p in ds.images[c]]
    order: list[int] = []
    for e in ds.episodes():
        if not order:
            order = rng.permutation(len(queries)).tolist()[::-1]
        cls, query = queries[order.pop()]
        others = [p for p in ds.images[cls] if p != query]
        picks = rng.choice(len(others), size=2, replace=False)
        assert (e.cls, e.query, e.supports) == (cls, query, tuple(others[i] for i in picks))
    assert ds.load(e.query, e.cls)[0].shape == (40, 60, 3)


def test_official_protocol_refused_where_not_implemented(tmp_path):
    root = _fss(tmp_path / "fss", n=3)
    with pytest.raises(DataError, match="protocol"):
        FSS1000Dataset(root, root / "test.txt", protocol="hsnet")


def test_episodes_file_replays_a_run(tmp_path):
    """A run's episodes.json, replayed with gf_sam (SAM's own features, k = 2): the same
    episodes, in order, whatever the draw settings."""
    base = [
        "data=synthetic_fss1000",
        "data.shots=2",
        "data.episodes=3",
        "logger=none",
        "progress=false",
        "overlays=false",
    ]
    first = tmp_path / "first"
    run_in_process([*base, "method=persam"], first)
    saved = json.loads((first / "episodes.json").read_text())
    second = tmp_path / "second"
    metrics = run_in_process(
        [
            *base,
            "method=gf_sam",
            "features=sam",
            "method.image_size=256",
            "data.seed=7",
            f"data.episodes_file={first / 'episodes.json'}",
        ],
        second,
    )
    replayed = json.loads((second / "episodes.json").read_text())
    assert replayed["episodes"] == saved["episodes"]
    assert metrics["n_episodes"] == 3 and metrics["method"] == "gf_sam"
    rows = list(csv.DictReader((second / "episodes.csv").open()))
    assert [r["query"] for r in rows] == [e["query"] for e in saved["episodes"]]


# -- gf_sam wherever PerSAM runs -----------------------------------------------------------------
def test_gf_sam_on_the_objects(tmp_path):
    """`python -m persam.run method=gf_sam` on the default (synthetic PerSeg-layout) objects:
    masks and instance maps written, scored."""
    run_dir = tmp_path / "run"
    metrics = run_in_process(
        [
            "method=gf_sam",
            *RANDOM_DINOV2,
            "method.image_size=256",
            "data.num_objects=1",
            "data.images_per_object=2",
            "logger=none",
            "progress=false",
        ],
        run_dir,
    )
    assert metrics["n_failed"] == 0 and metrics["method"] == "gf_sam"
    assert metrics["miou"] is not None
    assert list((run_dir / "instances").rglob("*.png"))


@pytest.mark.slow
def test_gf_sam_on_a_video(tmp_path):
    """`python -m persam.video method=gf_sam`: per frame per object, frame 0 as the reference."""
    import persam.video

    run_dir = tmp_path / "video"
    overrides = [
        "method=gf_sam",
        *RANDOM_DINOV2,
        "method.image_size=256",
        "data.num_sequences=1",
        "data.num_frames=3",
        "logger=none",
        "progress=false",
    ]
    jf = run_in_process(overrides, run_dir, "video", task=persam.video.main.__wrapped__)
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["jf"] == jf
    assert summary["n_failed"] == 0 and summary["jf"] is not None
    assert len(list((run_dir / "Annotations").rglob("*.png"))) == 3
