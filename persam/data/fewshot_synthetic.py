"""The synthetic world (persam/data/synthetic/) written in the few-shot benchmarks' layouts.

Each class is one held-out identity of the world; each image is one scene of it (224 x 224, on
clutter, with unlabelled one-off distractors), so everything runs offline:

* `fss1000`: `root/<class>/<n>.jpg` + `<n>.png` (0/255 grey masks), `n` = 1..N, and
  `root/test.txt` listing the classes (FSS-1000's layout);
* `coco20i`: `root/val2014/COCO_val2014_<id:012d>.jpg` and
  `root/annotations/instances_val2014.json` (COCO instances format: polygons for
  even image ids, compressed RLE for odd ones);
* `lvis92i`: `root/val2017/<id:012d>.jpg` and `root/annotations/lvis_v1_val.json` (LVIS v1:
  images named by `coco_url`, no `file_name`, no `iscrowd`).

`ensure_fewshot_synthetic` writes a layout once under `root/<layout>-<params>/` (into a
temporary folder renamed into place under a lock, like `persam.data.synthetic.ensure_synthetic`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from persam.data.files import generated_folder
from persam.data.synthetic import GENERATOR_VERSION, render_scene, split_identities

LAYOUTS = ("fss1000", "coco20i", "lvis92i")
SIZE = (224, 224)
_VERSION = 1


def class_name(index: int, family: str) -> str:
    return f"cls{index:02d}_{family}"


def _scenes(classes: int, images_per_class: int, seed: int):
    """(class index, class name, image index, image RGB, mask bool) for every scene."""
    for c, ident in enumerate(split_identities("heldout", seed, classes)):
        for k in range(images_per_class):
            rng = np.random.default_rng([7, seed, c, k, GENERATOR_VERSION])
            scene = render_scene(ident, rng, size=SIZE)
            yield c, class_name(c, ident.family), k, scene.image, scene.mask


def _write_jpg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cv2.imwrite failed for {path}")


def write_fss1000(out: Path, classes: int, images_per_class: int, seed: int) -> None:
    names = []
    for _, name, k, image, mask in _scenes(classes, images_per_class, seed):
        _write_jpg(out / name / f"{k + 1}.jpg", image)
        cv2.imwrite(str(out / name / f"{k + 1}.png"), mask.astype(np.uint8) * 255)
        if k == 0:
            names.append(name)
    (out / "test.txt").write_text("".join(f"{n}\n" for n in names))


def _polygons(mask: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def write_coco_style(
    out: Path, classes: int, images_per_class: int, seed: int, lvis: bool = False
) -> None:
    images, annotations, categories = [], [], []
    for c, name, k, image, mask in _scenes(classes, images_per_class, seed):
        if k == 0:
            categories.append({"id": c + 1, "name": name})
        image_id = 1 + c * images_per_class + k
        if lvis:
            rel = f"val2017/{image_id:012d}.jpg"
            entry = {"coco_url": f"http://images.cocodataset.org/{rel}"}
        else:
            rel = f"val2014/COCO_val2014_{image_id:012d}.jpg"
            entry = {"file_name": rel.split("/", 1)[1]}
        _write_jpg(out / rel, image)
        h, w = mask.shape
        images.append({"id": image_id, "height": h, "width": w, **entry})
        ys, xs = np.nonzero(mask)
        ann = {
            "id": image_id,
            "image_id": image_id,
            "category_id": c + 1,
            "segmentation": _polygons(mask) if image_id % 2 == 0 else _rle(mask),
            "area": float(mask.sum()),
            "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs)), float(np.ptp(ys))],
        }
        if not lvis:
            ann["iscrowd"] = 0
        annotations.append(ann)
    name = "lvis_v1_val.json" if lvis else "instances_val2014.json"
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "annotations" / name).write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )


def write_layout(out: Path, layout: str, classes: int, images_per_class: int, seed: int) -> None:
    """Write `layout` into the folder `out` (created)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown few-shot layout {layout!r}; use one of {LAYOUTS}")
    out.mkdir(parents=True, exist_ok=True)
    if layout == "fss1000":
        write_fss1000(out, classes, images_per_class, seed)
    else:
        write_coco_style(out, classes, images_per_class, seed, lvis=layout == "lvis92i")


def ensure_fewshot_synthetic(
    root: str | os.PathLike, layout: str, classes: int, images_per_class: int, seed: int = 0
) -> Path:
    """The layout's folder under `root`, generated on first use; returns it."""
    root = Path(root).expanduser()
    folder = root / f"{layout}-c{classes}-i{images_per_class}-s{seed}-v{_VERSION}"

    def write(tmp: Path) -> None:
        write_layout(tmp, layout, classes, images_per_class, seed)
        params = {"layout": layout, "classes": classes, "images": images_per_class}
        (tmp / "manifest.json").write_text(json.dumps({**params, "seed": seed}))

    return generated_folder(folder, lambda d: (d / "manifest.json").is_file(), write)


def synthetic_fewshot(
    root,
    layout: str = "fss1000",
    classes: int = 8,
    images_per_class: int = 6,
    world_seed: int = 0,
    **options,
):
    """The synthetic world as a few-shot dataset of `layout` (options: shots, episodes, seed,
    fold, ...: those of the layout's dataset class)."""
    from persam.data.fewshot import COCO20iDataset, FSS1000Dataset, LVIS92iDataset

    folder = ensure_fewshot_synthetic(root, layout, classes, images_per_class, world_seed)
    if layout == "fss1000":
        options.setdefault("split_file", str(folder / "test.txt"))
        return FSS1000Dataset(folder, **options)
    if layout == "coco20i":
        return COCO20iDataset(folder, **options)
    return LVIS92iDataset(folder, **options)
