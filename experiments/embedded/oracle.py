"""Oracle upper bounds for PerSAM on a dataset: prompt SAM with the ground truth, not the prior.

    python experiments/embedded/oracle.py                      # embedded backbone, held-out split
    python experiments/embedded/oracle.py backbone=vit_h data=perseg data.root=data/PerSeg
    python experiments/embedded/oracle.py --out oracle.json backbone.checkpoint=PATH

Arguments are Hydra overrides of `conf/config.yaml` (default here: `backbone=embedded`). For
every object the reference image is skipped (as in the evaluation) and every other image is
segmented with prompts taken from its own ground-truth mask:

* `point`: the mask's most interior pixel (maximum of the distance transform) as one positive
  point, one decoder pass with the single-mask output (PerSAM's first pass, perfect location);
* `point_refined`: the same, then PerSAM's two cascaded refinement passes (`persam/model/refine.py`);
* `box`: the mask's bounding box, one pass (the decoder's mask quality with a tight box).

It also measures whether SAM's three multimask outputs differ in scale (`scales`): for the same
interior point, one pass with `multimask_output=True`; per output its mean area relative to the
ground truth's and its IoU with it (nested part / object / group outputs read as area ratios
below 1, near 1 and above 1). And how often PerSAM's location prior (its positive point: the arg-max of the
similarity to the reference's mean feature) falls inside the ground-truth mask (`prior_hit`).
The scores are PerSAM's (`persam/metrics/image.py`: per-object accumulated IoU, mean over objects).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from persam.conf import CONFIG_DIR
from persam.data.perseg import foreground, read_annotation, read_image
from persam.metrics.image import ObjectMeter, mean_over_objects
from persam.model.encoder import Encoder
from persam.model.method import PerSAM
from persam.model.refine import cascaded_refinement, mask_box
from persam.run import build_dataset

VARIANTS = ("point", "point_refined", "box")


def interior_point(mask: np.ndarray) -> np.ndarray:
    """(1, 2) int (x, y) of the pixel farthest from the mask's border (ties: first in raster)."""
    dist = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([[x, y]], dtype=np.int64)


@torch.no_grad()
def oracle(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["backbone=embedded", *overrides])
    torch.manual_seed(cfg.seed)
    sam = instantiate(cfg.backbone)
    encoder = Encoder(sam)
    persam = PerSAM(sam, encoder)
    dataset = build_dataset(cfg)
    meters = {v: {} for v in VARIANTS}
    hits: dict[str, list[bool]] = {}
    scale_area: list[np.ndarray] = []
    scale_iou: list[np.ndarray] = []
    for obj in dataset:
        ref_image = read_image(obj.reference_image)
        ref_mask = read_annotation(obj.reference_annotation, ref_image.shape)
        target = persam.learn(ref_image, ref_mask)
        for v in VARIANTS:
            meters[v][obj.name] = ObjectMeter()
        hits[obj.name] = []
        for stem, path in obj.images.items():
            if stem == obj.reference:
                continue
            image = read_image(path)
            gt = foreground(read_annotation(obj.annotations[stem], image.shape))
            predictor = encoder.set_image(image)
            point, label = interior_point(gt), np.array([1])
            masks, _, low = predictor.predict(
                point_coords=point, point_labels=label, multimask_output=False
            )
            meters["point"][obj.name].update(masks[0], gt)
            multi, _, _ = predictor.predict(
                point_coords=point, point_labels=label, multimask_output=True
            )
            area = max(int(gt.sum()), 1)
            scale_area.append(multi.reshape(3, -1).sum(1) / area)
            inter = (multi & gt).reshape(3, -1).sum(1)
            union = (multi | gt).reshape(3, -1).sum(1)
            scale_iou.append(inter / np.maximum(union, 1))
            refined = cascaded_refinement(predictor, point, label, masks[0], low[0:1], steps=2)
            meters["point_refined"][obj.name].update(refined.mask, gt)
            box = mask_box(gt)
            masks, _, _ = predictor.predict(box=box[None], multimask_output=False)
            meters["box"][obj.name].update(masks[0], gt)
            coords, labels, _ = persam._locate(predictor, target, negative=False)
            x, y = coords[labels == 1][0]
            hits[obj.name].append(bool(gt[int(y), int(x)]))

    out: dict = {"backbone": cfg.backbone.name, "overrides": overrides, "variants": {}}
    for v in VARIANTS:
        per_object = {name: m.result() for name, m in meters[v].items()}
        out["variants"][v] = {**mean_over_objects(list(per_object.values())), "objects": per_object}
    if scale_area:
        out["scales"] = {
            "area_ratio_mean": np.mean(scale_area, 0).round(4).tolist(),
            "area_ratio_median": np.median(scale_area, 0).round(4).tolist(),
            "iou_mean": np.mean(scale_iou, 0).round(4).tolist(),
            "n_images": len(scale_area),
        }
    all_hits = [h for hs in hits.values() for h in hs]
    out["prior_hit"] = float(np.mean(all_hits)) if all_hits else None
    out["prior_hit_objects"] = {k: float(np.mean(h)) for k, h in hits.items() if h}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/config.yaml")
    args = parser.parse_args(argv)
    result = oracle(args.overrides)
    for v in VARIANTS:
        r = result["variants"][v]
        print(f"oracle {v:14s} mIoU {100 * r['miou']:.2f}  mBIoU {100 * r['mbiou']:.2f}")
    if "scales" in result:
        sc = result["scales"]
        for i in range(3):
            print(
                f"multimask output {i + 1}: area / ground truth mean "
                f"{sc['area_ratio_mean'][i]:.2f} (median {sc['area_ratio_median'][i]:.2f}), "
                f"IoU {100 * sc['iou_mean'][i]:.2f}"
            )
    print(
        f"location prior: positive point inside the object on {100 * result['prior_hit']:.1f}% of images"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
