"""Multi-instance PerSAM (`method.instances=auto`: suppress the similarity map, prompt again, one
encoding per image) against the community script's approach (black out the found instance and
re-encode the image, up to 10 times), on the synthetic multi-instance set.

Both use the same learned target, the same PerSAM decoder passes and the same duplicate rule (a
mask that is empty or more than half covered by the instances found so far ends the search);
the community loop has no similarity-peak threshold (it stops on that rule or after 10). No
embedding cache: every encoding is paid. Prints, per method, the median time per image, the
instance precision / recall / F1 (greedy matching at IoU >= 0.5, reference images excluded) and
the encodings per image, and the ratios.

    python benchmarks/bench_instances.py                           # embedded SAM
    python benchmarks/bench_instances.py --backbone vit_b          # ViT-B cost (random weights:
                                                                   #  timings only)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from persam.conf import CONFIG_DIR
from persam.data.perseg import read_annotation, read_image
from persam.data.synthetic import synthetic_dataset
from persam.metrics.image import InstanceMeter
from persam.model.encoder import Encoder
from persam.model.method import PerSAM


class CountingEncoder(Encoder):
    """An uncached `Encoder` that counts its encodings."""

    calls = 0

    def __call__(self, image):
        self.calls += 1
        return super().__call__(image)


def community(method: PerSAM, image: np.ndarray, target, limit: int = 10) -> np.ndarray:
    """Black out each found instance and segment the re-encoded image again -> instance map."""
    current = image.copy()
    labels = np.zeros(image.shape[:2], np.uint8)
    for _ in range(limit):
        mask = method.segment(current, target).mask
        area = int(mask.sum())
        if area == 0 or (mask & (labels > 0)).sum() > method.instance_overlap * area:
            break
        labels[mask & (labels == 0)] = labels.max() + 1
        current[mask] = 0
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="embedded", help="embedded, tiny, vit_b, ...")
    parser.add_argument("--objects", type=int, default=6)
    parser.add_argument("--images", type=int, default=4, help="images per object (00: reference)")
    parser.add_argument("--copies", default="1-3", help="copies of the object per test image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timings per image (median kept)")
    args = parser.parse_args()

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"backbone={args.backbone}"])
    sam = instantiate(cfg.backbone)
    lo, hi = (int(v) for v in args.copies.split("-"))
    data = synthetic_dataset(
        tempfile.mkdtemp(prefix="persam-bench-instances-"),
        seed=args.seed,
        num_objects=args.objects,
        images_per_object=args.images,
        instances_per_image=[lo, hi],
    )
    encoder = CountingEncoder(sam)  # no cache: every encoding counts
    ours = PerSAM(sam, encoder, instances="auto")
    single = PerSAM(sam, encoder, instances=1)
    runs = {"suppress (ours)": lambda img, t: ours.segment(img, t).instance_map()}
    runs["black out + re-encode"] = lambda img, t: community(single, img, t)
    times = {k: [] for k in runs}
    encodings = {k: [] for k in runs}
    meters = {k: InstanceMeter() for k in runs}
    from persam.data.instances import read_instances

    for obj in data:
        ref = read_image(obj.reference_image)
        target = single.learn(ref, read_annotation(obj.reference_annotation, ref.shape))
        for stem, path in obj.images.items():
            if stem == obj.reference:
                continue
            image = read_image(path)
            gt = read_instances(data.instances_root / obj.name / f"{stem}.png")
            for name, run in runs.items():
                samples = []
                for _ in range(args.repeats):
                    encoder.calls = 0
                    start = time.perf_counter()
                    labels = run(image, target)
                    samples.append(time.perf_counter() - start)
                times[name].append(statistics.median(samples))
                encodings[name].append(encoder.calls)
                meters[name].update(labels, gt)

    n = len(times["suppress (ours)"])
    print(
        f"{args.backbone} backbone, {n} test images with {lo}-{hi} copies (synthetic, seed "
        f"{args.seed}), median of {args.repeats} timings per image"
    )
    print(
        f"{'method':24s} {'s/image':>9s} {'enc/img':>8s} {'prec':>6s} {'recall':>7s} {'f1':>6s}"
        f" {'found/gt':>9s}"
    )
    res = {}
    for name in runs:
        r = meters[name].result()
        res[name] = (statistics.median(times[name]), r)
        print(
            f"{name:24s} {res[name][0]:9.3f} {statistics.mean(encodings[name]):8.2f} "
            f"{r['precision']:6.3f} {r['recall']:7.3f} {r['f1']:6.3f} "
            f"{r['found']:>4d}/{r['ground_truth']:<4d}"
        )
    (t_ours, r_ours), (t_comm, r_comm) = res["suppress (ours)"], res["black out + re-encode"]
    print(
        f"time ratio (re-encode / ours): {t_comm / t_ours:.2f}x; recall ratio (ours / "
        f"re-encode): {r_ours['recall'] / max(r_comm['recall'], 1e-12):.2f}"
    )


if __name__ == "__main__":
    main()
