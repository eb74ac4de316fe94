"""The official few-shot protocol of COCO-20i (HSNet's `DatasetCOCO`) and LVIS-92i (Matcher's
`DatasetLVIS`), as GF-SAM and Matcher evaluate, on small layouts written here in the official
loaders' own formats. Each draw is checked against the official loader's sampling code as
published (`np.random.seed(0)`, then `np.random.choice(..., 1, replace=False)` on the pickled
lists), transcribed below from the public loaders."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from persam.data.fewshot import COCO_CLASSES, COCO20iDataset, LVIS92iDataset
from persam.data.perseg import DataError
from tests.helpers import run_in_process

SIZE = (30, 40)  # (H, W) of the written images


def _nearest_1024(mask: np.ndarray) -> np.ndarray:
    """The official loaders' mask resize: `F.interpolate(..., mode='nearest')` to 1024 x 1024."""
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(m, (1024, 1024), mode="nearest")[0, 0].numpy() > 0


def _image(rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8))


def write_hsnet_coco(root: Path, fold: int, per_class: int = 3) -> dict[int, list[str]]:
    """HSNet's COCO2014 folder for one fold: splits/val/fold<f>.pkl (class index -> names, in
    a shuffled order), annotations/val2014/<name>.png (class index + 1; another class's value
    beside it), the val2014 images."""
    rng = np.random.default_rng(fold)
    lists: dict[int, list[str]] = {}
    for i in range(fold, 80, 4):
        names = [f"val2014/COCO_val2014_{1000 * i + k:012d}.jpg" for k in range(per_class)]
        lists[i] = [names[j] for j in rng.permutation(per_class)]
        for n, name in enumerate(names):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            _image(rng).save(root / name)
            mask = np.zeros(SIZE, np.uint8)
            mask[5 : 15 + n, 4:20] = i + 1
            mask[20:, 25:] = (i + 2) % 81  # another class: not this one's mask
            path = root / "annotations" / name.replace(".jpg", ".png")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(path)
    (root / "splits" / "val").mkdir(parents=True)
    with open(root / "splits" / "val" / f"fold{fold}.pkl", "wb") as f:
        pickle.dump(lists, f)
    return lists


def _official_coco_draw(lists: dict, fold: int, shots: int, n: int) -> list[tuple]:
    """HSNet's `DatasetCOCO.load_frame`, n times after `utils.fix_randseed(0)`."""
    np.random.seed(0)
    class_ids = [fold + 4 * v for v in range(20)]
    out = []
    for _ in range(n):
        class_sample = np.random.choice(class_ids, 1, replace=False)[0]
        query_name = np.random.choice(lists[class_sample], 1, replace=False)[0]
        support_names = []
        while True:
            support_name = np.random.choice(lists[class_sample], 1, replace=False)[0]
            if query_name != support_name:
                support_names.append(support_name)
            if len(support_names) == shots:
                break
        out.append((COCO_CLASSES[class_sample], str(query_name), tuple(map(str, support_names))))
    return out


def test_coco20i_official_is_hsnets_loader(tmp_path):
    root = tmp_path / "COCO2014"
    lists = write_hsnet_coco(root, fold=1)
    ds = COCO20iDataset(root, fold=1, shots=2, episodes=40, protocol="official")
    assert ds.classes == [COCO_CLASSES[i] for i in range(1, 80, 4)]
    drawn = [(e.cls, e.query, e.supports) for e in ds.episodes()]
    assert drawn == _official_coco_draw(lists, 1, 2, 40)
    cls, query, _ = drawn[0]
    image, mask = ds.load(query, cls)
    assert image.shape == (1024, 1024, 3) and mask.shape == (1024, 1024)
    png = np.asarray(Image.open(root / "annotations" / query.replace(".jpg", ".png")))
    expected = _nearest_1024(png == COCO_CLASSES.index(cls) + 1)
    assert mask.sum() > 0 and np.array_equal(mask, expected)
    assert len(COCO20iDataset(root, fold=1, episodes=None, protocol="official")) == 1000


def test_coco20i_official_refuses_missing_or_short_lists(tmp_path):
    root = tmp_path / "COCO2014"
    root.mkdir()
    with pytest.raises(DataError, match=r"fold0\.pkl not found.*data\.protocol=persam"):
        COCO20iDataset(root, fold=0, protocol="official")
    write_hsnet_coco(root, fold=2, per_class=1)
    with pytest.raises(DataError, match="fewer than 2 image"):
        COCO20iDataset(root, fold=2, protocol="official")
    (root / "splits" / "val" / "fold3.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"Cannot read .*fold3\.pkl"):
        COCO20iDataset(root, fold=3, protocol="official")


def _polygon(y0: int, x0: int, y1: int, x1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def write_matcher_lvis(root: Path, n_classes: int = 25) -> dict:
    """Matcher's LVIS folder: lvis_val.pkl (category id -> {image name: {annotations}}, ids not
    sorted, some categories with one image) and coco/val2017 images. Annotations are polygons
    and compressed RLEs."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(3)
    anno: dict = {}
    for c, cid in enumerate(rng.permutation(np.arange(100, 100 + 3 * n_classes, 3))):
        per = 1 if c % 6 == 5 else 3
        anno[int(cid)] = {}
        for k in range(per):
            name = f"val2017/{1000 * int(cid) + k:012d}.jpg"
            (root / "coco" / name).parent.mkdir(parents=True, exist_ok=True)
            _image(rng).save(root / "coco" / name)
            rle_mask = np.zeros(SIZE, np.uint8, order="F")
            rle_mask[18:26, 2 : 10 + k] = 1
            rle = mask_utils.encode(rle_mask)
            anno[int(cid)][name] = {
                "annotations": [
                    {"segmentation": _polygon(3, 5 + k, 12, 22)},
                    {"segmentation": rle},
                ]
            }
    with open(root / "lvis_val.pkl", "wb") as f:
        pickle.dump(anno, f)
    return anno


def _official_lvis_draw(anno: dict, fold: int, shots: int, n: int) -> list[tuple]:
    """Matcher's `DatasetLVIS` class list and `load_frame(idx % n_classes)` after seeding 0."""
    val_cat_ids = [i for i in list(anno.keys()) if len(anno[i]) > shots]
    class_ids_val = [val_cat_ids[fold + 10 * v] for v in range(len(val_cat_ids) // 10)]
    np.random.seed(0)
    out = []
    for idx in range(n):
        class_sample = class_ids_val[idx % len(class_ids_val)]
        names = list(anno[class_sample].keys())
        query_name = np.random.choice(names, 1, replace=False)[0]
        support_names = []
        while True:
            support_name = np.random.choice(names, 1, replace=False)[0]
            if query_name != support_name:
                support_names.append(support_name)
            if len(support_names) == shots:
                break
        out.append(
            (str(class_sample), f"coco/{query_name}", tuple(f"coco/{s}" for s in support_names))
        )
    return out


def test_lvis92i_official_is_matchers_loader(tmp_path):
    root = tmp_path / "LVIS"
    anno = write_matcher_lvis(root)
    ds = LVIS92iDataset(root, fold=1, shots=1, episodes=30, protocol="official")
    drawn = [(e.cls, e.query, e.supports) for e in ds.episodes()]
    assert drawn == _official_lvis_draw(anno, 1, 1, 30)
    assert len(ds.classes) == 2  # 21 of the 25 categories have more than 1 image
    cls, query, _ = drawn[0]
    _, mask = ds.load(query, cls)
    from pycocotools import mask as mask_utils

    k = int(query[-5])
    # the polygon, rasterised by pycocotools (detectron2's polygons_to_bitmask), and the RLE
    union = (
        mask_utils.decode(
            mask_utils.merge(mask_utils.frPyObjects(_polygon(3, 5 + k, 12, 22), *SIZE))
        )
        > 0
    )
    assert union.sum() > 0
    union[18:26, 2 : 10 + k] = True
    assert mask.shape == (1024, 1024) and np.array_equal(mask, _nearest_1024(union))
    # shots=2 leaves out the categories with two images or fewer; episodes=null: Matcher's 2300
    assert len(LVIS92iDataset(root, fold=0, shots=2, episodes=None, protocol="official")) == 2300
    with pytest.raises(DataError, match=r"lvis_val\.pkl not found"):
        LVIS92iDataset(tmp_path, fold=0, protocol="official")


def test_official_coco_through_the_runner(tmp_path):
    """`data=coco20i` (official by default) on HSNet's layout: the episodes of HSNet's draw in
    episodes.csv, masks written at 1024 x 1024, the fold's 20 classes in metrics.json."""
    root = tmp_path / "COCO2014"
    lists = write_hsnet_coco(root, fold=0)
    out = tmp_path / "run"
    metrics = run_in_process(
        [
            "data=coco20i",
            f"data.root={root}",
            "data.episodes=4",
            "method.refine_steps=0",
            "logger=none",
            "progress=false",
            "overlays=false",
        ],
        out,
    )
    rows = list(csv.DictReader((out / "episodes.csv").open()))
    expected = _official_coco_draw(lists, 0, 1, 4)
    assert [(r["class"], r["query"], r["supports"]) for r in rows] == [
        (c, q, ";".join(s)) for c, q, s in expected
    ]
    for i in range(4):
        assert Image.open(out / "masks" / "episodes" / f"{i:04d}.png").size == (1024, 1024)
    assert metrics["n_episodes"] == 4 and len(metrics["classes"]) == 20
    saved = json.loads((out / "episodes.json").read_text())
    assert saved["protocol"] == "official" and "annotations" not in saved  # no JSON read
