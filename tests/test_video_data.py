"""DAVIS-layout reading (persam/data/davis.py), its bad-input errors, and the synthetic videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from persam.data.davis import DavisDataset, davis_palette, read_label_map
from persam.data.perseg import DataError
from persam.data.synthetic_video import SyntheticVideoDataset, ensure_synthetic_video


def write_sequence(root: Path, name: str, n: int = 4, size=(48, 64), ids=(1, 2)) -> None:
    """A DAVIS sequence: n noise frames, indexed annotations with one square per object."""
    h, w = size
    rng = np.random.default_rng(len(name))
    img_dir = root / "JPEGImages" / "480p" / name
    ann_dir = root / "Annotations" / "480p" / name
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            img_dir / f"{i:05d}.jpg"
        )
        labels = np.zeros((h, w), np.uint8)
        for k, obj in enumerate(ids):
            labels[4 + 12 * k : 14 + 12 * k, 4 + i : 14 + i] = obj
        png = Image.fromarray(labels, mode="P")
        png.putpalette(davis_palette())
        png.save(ann_dir / f"{i:05d}.png")


def davis(tmp_path: Path, names=("a", "b")) -> Path:
    root = tmp_path / "DAVIS"
    for name in names:
        write_sequence(root, name)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names) + "\n")
    return root


def test_davis_palette_is_the_voc_colormap() -> None:
    p = davis_palette()
    assert p[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]
    assert len(p) == 768


def test_reads_split_frames_and_indexed_annotations(tmp_path) -> None:
    data = DavisDataset(davis(tmp_path))
    assert data.names == ["a", "b"]
    seq = data.sequence("a")
    seq.check()
    assert len(seq) == 4 and seq.stems[0] == "00000"
    labels, palette = seq.first
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    assert palette[:6] == [0, 0, 0, 128, 0, 0]
    assert seq.frame(2).shape == (48, 64, 3)
    only = DavisDataset(davis(tmp_path / "x"), sequences=["b"])
    assert only.names == ["b"]


def test_rgb_annotation_is_mapped_through_the_palette(tmp_path) -> None:
    labels = np.zeros((10, 12), np.uint8)
    labels[2:5, 2:5] = 1
    labels[6:9, 6:9] = 2
    colours = np.array(davis_palette(), np.uint8).reshape(256, 3)
    path = tmp_path / "rgb.png"
    Image.fromarray(colours[labels]).save(path)
    mapped, _ = read_label_map(path)
    np.testing.assert_array_equal(mapped, labels)
    rgb = colours[labels].copy()
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(path)
    with pytest.raises(DataError, match=r"rgb\.png.*not an indexed.*\(1, 2, 3\)"):
        read_label_map(path)


def test_missing_root_and_split_say_what_to_do(tmp_path) -> None:
    with pytest.raises(DataError, match="DAVIS root not found.*data.root"):
        DavisDataset(tmp_path / "nowhere")
    root = davis(tmp_path)
    with pytest.raises(DataError, match=r"test\.txt.*data\.split"):
        DavisDataset(root, split="test")


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing_sequence", r"listed but its frames are missing"),
        ("empty", r"is empty"),
        ("no_first_annotation", r"first frame's annotation .*00000\.png is missing"),
        ("gap", r"gaps in the frame numbering.*missing 00002"),
        ("sizes", r"frames of different sizes"),
        ("annotation_size", r"00001\.png is 32x32 but the frames are 64x48"),
        ("empty_first", r"has no object"),
        ("id_gap", r"object id\(s\) \[2\] have no pixel in the first"),
        ("later_id", r"00002\.png has object id\(s\) \[5\]"),
    ],
)
def test_bad_sequences_raise_with_the_file_and_the_fix(tmp_path, breakage, message) -> None:
    root = davis(tmp_path)
    frames = root / "JPEGImages" / "480p" / "a"
    anns = root / "Annotations" / "480p" / "a"
    pal = davis_palette()

    def save_labels(path, labels):
        png = Image.fromarray(labels.astype(np.uint8), mode="P")
        png.putpalette(pal)
        png.save(path)

    if breakage == "missing_sequence":
        (root / "ImageSets" / "2017" / "val.txt").write_text("a\nghost\nb\n")
        with pytest.raises(DataError, match=message):
            DavisDataset(root).sequence("ghost")
        return
    if breakage == "empty":
        for p in frames.iterdir():
            p.unlink()
    elif breakage == "no_first_annotation":
        (anns / "00000.png").unlink()
    elif breakage == "gap":
        (frames / "00002.jpg").unlink()
    elif breakage == "sizes":
        Image.new("RGB", (32, 32)).save(frames / "00003.jpg")
    elif breakage == "annotation_size":
        save_labels(anns / "00001.png", np.zeros((32, 32)))
    elif breakage == "empty_first":
        save_labels(anns / "00000.png", np.zeros((48, 64)))
    elif breakage == "id_gap":
        labels = np.zeros((48, 64))
        labels[4:10, 4:10] = 1
        labels[20:30, 20:30] = 3
        save_labels(anns / "00000.png", labels)
    elif breakage == "later_id":
        labels = np.array(Image.open(anns / "00002.png"))
        labels[40:44, 40:44] = 5
        save_labels(anns / "00002.png", labels)
    with pytest.raises(DataError, match=message):
        DavisDataset(root).sequence("a").check()
    DavisDataset(root).sequence("b").check()  # the other sequence is fine


def test_synthetic_videos_are_deterministic_and_cover_the_cases(tmp_path) -> None:
    a = ensure_synthetic_video(tmp_path / "one", seed=0, num_sequences=4, num_frames=12)
    b = ensure_synthetic_video(tmp_path / "two", seed=0, num_sequences=4, num_frames=12)
    data = SyntheticVideoDataset(tmp_path / "one", seed=0, num_sequences=4, num_frames=12)
    assert data.names == ["crossing", "exit-return", "three-spin", "portrait"]
    shapes = set()
    for name in data.names:
        seq = data.sequence(name)
        seq.check()
        assert len(seq) == 12
        for i in (0, 5, 11):
            rel = Path("JPEGImages/480p") / name / f"{i:05d}.jpg"
            assert (a / rel).read_bytes() == (b / rel).read_bytes()
        first = seq.annotation(0)
        shapes.add(first.shape)
        assert first.shape[0] != first.shape[1]
    assert any(h > w for h, w in shapes) and any(w > h for h, w in shapes)
    exit_seq = data.sequence("exit-return")
    present = [1 in exit_seq.annotation(i) for i in range(12)]
    assert present[0] and present[-1] and not all(present)  # leaves and comes back
    spin = data.sequence("three-spin")
    assert sorted(np.unique(spin.annotation(0)).tolist()) == [0, 1, 2, 3]
    # mutual occlusion in `crossing`: in some frame object 2 covers part of object 1's box
    cross = data.sequence("crossing")
    overlaps = []
    for i in range(12):
        labels = cross.annotation(i)
        ys, xs = np.nonzero(labels == 1)
        box = labels[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        overlaps.append(int((box == 2).sum()))
    assert max(overlaps) > 100
    # a second call reuses the generated files
    mtime = (a / "manifest.json").stat().st_mtime_ns
    ensure_synthetic_video(tmp_path / "one", seed=0, num_sequences=4, num_frames=12)
    assert (a / "manifest.json").stat().st_mtime_ns == mtime
