"""Tests for the procedural synthetic world (persam.data.synthetic)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from persam.data.synthetic import (
    FAMILIES,
    GENERATOR_VERSION,
    ensure_synthetic,
    make_identity,
    render_scene,
    split_identities,
)


def tree_bytes(split_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(split_dir)): p.read_bytes()
        for p in sorted(split_dir.rglob("*"))
        if p.is_file()
    }


def read_mask(path: Path) -> np.ndarray:
    ann = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return ann[..., 0] > 0


def object_mean_colour(split_dir: Path, name: str) -> np.ndarray:
    means = []
    for img_path in sorted((split_dir / "Images" / name).glob("*.jpg")):
        img = cv2.cvtColor(cv2.imread(str(img_path)), cv2.COLOR_BGR2RGB).astype(np.float64)
        mask = read_mask(split_dir / "Annotations" / name / f"{img_path.stem}.png")
        means.append(img[mask].mean(0))
    return np.mean(means, axis=0)


@pytest.fixture(scope="module")
def heldout(synthetic_heldout: Path) -> Path:
    """The default split, seed 0 (conftest: generated once per session)."""
    return synthetic_heldout


# ----------------------------------------------------------------------------- layout


def test_layout_and_annotation_convention(heldout: Path) -> None:
    assert heldout.name == "heldout"
    objects = sorted(p.name for p in (heldout / "Images").iterdir())
    assert len(objects) == 6
    assert sorted(p.name for p in (heldout / "Annotations").iterdir()) == objects
    pattern = re.compile(r"^obj\d{2}_(" + "|".join(FAMILIES) + r")$")
    sizes = set()
    for name in objects:
        assert pattern.match(name), name
        images = sorted(p.name for p in (heldout / "Images" / name).iterdir())
        annotations = sorted(p.name for p in (heldout / "Annotations" / name).iterdir())
        assert images == [f"{k:02d}.jpg" for k in range(4)]
        assert annotations == [f"{k:02d}.png" for k in range(4)]
        for k in range(4):
            img = cv2.imread(str(heldout / "Images" / name / f"{k:02d}.jpg"))
            ann_bgr = cv2.imread(str(heldout / "Annotations" / name / f"{k:02d}.png"))
            assert img is not None and ann_bgr is not None
            assert img.shape == ann_bgr.shape and img.shape[2] == 3
            ann = cv2.cvtColor(ann_bgr, cv2.COLOR_BGR2RGB)
            # PerSeg: background (0, 0, 0), foreground red 128 (BGR (0, 0, 128) on disk)
            assert set(np.unique(ann[..., 0]).tolist()) == {0, 128}
            assert not ann[..., 1].any() and not ann[..., 2].any()
            fg = ann[..., 0] > 0
            assert 0.005 * fg.size < fg.sum() < 0.9 * fg.size
            h, w = fg.shape
            assert 320 <= h <= 640 and 320 <= w <= 640
            assert 0.6 <= w / h <= 1.7
            sizes.add((h, w))
    assert len(sizes) > 10  # sizes vary
    assert any(h != w for h, w in sizes)  # and are not square


def test_manifest(heldout: Path) -> None:
    manifest = json.loads((heldout / "manifest.json").read_text())
    assert manifest["params"] == {
        "generator_version": GENERATOR_VERSION,
        "split": "heldout",
        "seed": 0,
        "num_objects": 6,
        "images_per_object": 4,
    }
    names = [o["name"] for o in manifest["objects"]]
    assert names == sorted(p.name for p in (heldout / "Images").iterdir())


def test_identities_differ_in_colour(heldout: Path) -> None:
    a = object_mean_colour(heldout, "obj00_" + split_identities("heldout", 0, 2)[0].family)
    b = object_mean_colour(heldout, "obj01_" + split_identities("heldout", 0, 2)[1].family)
    assert np.linalg.norm(a - b) > 20.0


def test_no_temporary_folders_left(heldout: Path) -> None:
    assert sorted(p.name for p in heldout.parent.iterdir() if p.is_dir()) == ["heldout"]


# ----------------------------------------------------------------------------- determinism


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    kwargs = {"num_objects": 2, "images_per_object": 2}
    a = tree_bytes(ensure_synthetic(tmp_path / "a", seed=3, **kwargs))
    b = tree_bytes(ensure_synthetic(tmp_path / "b", seed=3, **kwargs))
    c = tree_bytes(ensure_synthetic(tmp_path / "c", seed=4, **kwargs))
    assert len(a) == 2 * 2 * 2 + 1
    assert a == b
    images = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != c.get(k) for k in images)


def test_render_scene_in_memory_is_deterministic() -> None:
    ident = make_identity(12345)
    one = render_scene(ident, np.random.default_rng(7), size=(300, 500))
    two = render_scene(ident, np.random.default_rng(7), size=(300, 500))
    other = render_scene(ident, np.random.default_rng(8), size=(300, 500))
    img1, mask1, img2, mask2, img3 = one.image, one.mask, two.image, two.mask, other.image
    assert one.labels is None  # only drawn when asked for
    assert img1.shape == (300, 500, 3) and img1.dtype == np.uint8
    assert mask1.shape == (300, 500) and mask1.dtype == bool
    assert 0 < mask1.sum() < mask1.size
    np.testing.assert_array_equal(img1, img2)
    np.testing.assert_array_equal(mask1, mask2)
    assert not np.array_equal(img1, img3)


def test_distractor_labels_draw_the_same_scene() -> None:
    ident = make_identity(12345)
    pool = [make_identity(s) for s in (11, 22, 33)]
    for seed in range(5):
        plain = render_scene(
            ident, np.random.default_rng(seed), size=(300, 400), distractor_pool=pool
        )
        labelled = render_scene(
            ident,
            np.random.default_rng(seed),
            size=(300, 400),
            distractor_pool=pool,
            distractor_labels=True,
        )
        np.testing.assert_array_equal(plain.image, labelled.image)
        np.testing.assert_array_equal(plain.mask, labelled.mask)
        mask, labels = labelled.mask, labelled.labels
        assert labels.shape == mask.shape and labels.dtype == np.uint8
        assert not (labels[mask] > 0).any()  # the target covers the distractors behind it
        assert set(np.unique(labels)) <= set(range(5))
        assert (labels > 0).sum() > 0
    none = render_scene(
        ident, np.random.default_rng(0), size=(300, 400), distractors=0, distractor_labels=True
    )
    assert not none.labels.any()


def test_part_labels_draw_the_same_scene_and_nest_inside_the_target() -> None:
    from persam.data.synthetic.drawing import part_sprites, render_sprite

    composite = make_identity(777, family="composite")
    plain_blob = next(
        make_identity(s, family="blob")
        for s in range(100)
        if not make_identity(s, family="blob").outline
    )
    outlined = next(make_identity(s, family="star") for s in range(100) if make_identity(s).outline)
    sprite_mask = render_sprite(composite)[..., 3] >= 128
    parts = part_sprites(composite)
    assert len(parts) >= 2
    for i, a in enumerate(parts):
        for b in parts[i + 1 :]:
            assert not ((a >= 128) & (b >= 128)).any()  # a shape drawn over another hides it
    outside = (np.max(parts, axis=0) >= 128) & ~sprite_mask  # anti-aliased edges at most
    assert outside.sum() <= 0.01 * sprite_mask.sum()
    (interior,) = part_sprites(outlined)
    whole = render_sprite(outlined)[..., 3] >= 128
    assert 0 < (interior >= 128).sum() < whole.sum()
    assert part_sprites(plain_blob) == ()

    for ident in (composite, outlined, plain_blob):
        for seed in range(3):
            plain = render_scene(ident, np.random.default_rng(seed), size=(300, 400))
            rich = render_scene(
                ident, np.random.default_rng(seed), size=(300, 400), part_labels=True
            )
            np.testing.assert_array_equal(plain.image, rich.image)
            np.testing.assert_array_equal(plain.mask, rich.mask)
            assert plain.parts is None and rich.parts.dtype == np.uint8
            assert not (rich.parts[~rich.mask] > 0).any()  # parts are visible target pixels
            n = len(part_sprites(ident))
            assert set(np.unique(rich.parts)) <= set(range(n + 1))
            if n:
                assert (rich.parts > 0).sum() > 0.3 * rich.mask.sum()
            else:
                assert not rich.parts.any()


def test_make_identity_is_deterministic() -> None:
    assert make_identity(99) == make_identity(99)
    assert make_identity(99) != make_identity(100)
    assert make_identity(99, family="ring").family == "ring"
    with pytest.raises(ValueError):
        make_identity(99, family="teapot")


def test_occluders_hide_at_most_max_occlusion() -> None:
    # Everything up to the target is drawn before the occluders, so the same rng seed with
    # no occluders gives the unoccluded target mask at the same pose.
    ident = make_identity(5, family="blob")
    occluded_any = False
    for s in range(8):
        full = render_scene(ident, np.random.default_rng(s), size=(400, 600), max_occluders=0).mask
        visible = render_scene(
            ident, np.random.default_rng(s), size=(400, 600), max_occluders=2, max_occlusion=0.15
        ).mask
        assert not (visible & ~full).any()
        assert visible.sum() >= 0.85 * full.sum()
        occluded_any |= bool(visible.sum() < full.sum())
    assert occluded_any


# ----------------------------------------------------------------------------- splits


def test_train_and_heldout_identities_are_disjoint(tmp_path: Path) -> None:
    heldout = split_identities("heldout", seed=0, num_objects=20)
    train = split_identities("train", seed=0, num_objects=50)
    assert not {i.seed for i in heldout} & {i.seed for i in train}
    assert not set(heldout) & set(train)
    # also across dataset seeds
    assert not {i.seed for i in split_identities("train", seed=1, num_objects=50)} & {
        i.seed for i in heldout
    }

    h_dir = ensure_synthetic(tmp_path, "heldout", num_objects=2, images_per_object=1)
    t_dir = ensure_synthetic(tmp_path, "train", images_per_object=1, train_objects=3)
    assert t_dir == tmp_path / "train"
    h_seeds = {
        o["identity_seed"] for o in json.loads((h_dir / "manifest.json").read_text())["objects"]
    }
    t_manifest = json.loads((t_dir / "manifest.json").read_text())
    t_seeds = {o["identity_seed"] for o in t_manifest["objects"]}
    assert len(h_seeds) == 2 and len(t_seeds) == 3
    assert not h_seeds & t_seeds


def test_unknown_split_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ensure_synthetic(tmp_path, split="val")


# ----------------------------------------------------------------------------- caching


def test_regenerates_only_when_needed(tmp_path: Path) -> None:
    kwargs = {"num_objects": 2, "images_per_object": 2}
    split_dir = ensure_synthetic(tmp_path, **kwargs)
    img = (
        split_dir
        / "Images"
        / sorted(p.name for p in (split_dir / "Images").iterdir())[0]
        / "01.jpg"
    )
    stamp = img.stat().st_mtime_ns
    ensure_synthetic(tmp_path, **kwargs)
    assert img.stat().st_mtime_ns == stamp  # complete: untouched

    img.unlink()  # incomplete: regenerated
    ensure_synthetic(tmp_path, **kwargs)
    assert img.is_file()

    ensure_synthetic(tmp_path, num_objects=2, images_per_object=3)  # parameters changed
    manifest = json.loads((split_dir / "manifest.json").read_text())
    assert manifest["params"]["images_per_object"] == 3
    assert (img.parent / "02.jpg").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["heldout"]
