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
    python benchmarks/bench_instances.py --absent 4 --repeats 1    # + 4 images per object that
                                                                   #  hold no copy of it

`--absent N` adds, per object, N scenes of the same world without the object (another object of
the split as the scene's subject, distractors drawn without it): every instance found there is
a false positive. Printed per method: the images where it returns at most one instance (the
paper's single answer), the false instances per image, and the false-positive rate (the share
of those images with more than one instance). `--presence X` sets `method.instance_presence`
(0: the test off, as before issue 23).
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
from persam.data.synthetic.identities import split_identities
from persam.data.synthetic.scene import render_scene
from persam.metrics.image import InstanceMeter
from persam.model.encoder import Encoder
from persam.model.method import PerSAM

ABSENT_SEED = 23  # the draw of the scenes without the object (issue 23)


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
    parser.add_argument("--absent", type=int, default=0, help="images per object without it")
    parser.add_argument("--presence", type=float, default=None, help="instance_presence (0: off)")
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
    if args.presence is not None:
        ours.instance_presence = args.presence
    single = PerSAM(sam, encoder, instances=1)
    runs = {"suppress (ours)": lambda img, t: ours.segment(img, t).instance_map()}
    runs["black out + re-encode"] = lambda img, t: community(single, img, t)
    times = {k: [] for k in runs}
    encodings = {k: [] for k in runs}
    meters = {k: InstanceMeter() for k in runs}
    from persam.data.instances import read_instances

    absent = {k: [] for k in runs}  # instances returned on images without the object
    identities = split_identities("heldout", args.seed, args.objects)
    for obj in data:
        ref = read_image(obj.reference_image)
        target = single.learn(ref, read_annotation(obj.reference_annotation, ref.shape))
        index = int(obj.name[3:5])  # obj<NN>_<family>: the split's NN-th identity
        pool = [ident for i, ident in enumerate(identities) if i != index]
        for a in range(args.absent):
            rng = np.random.default_rng([ABSENT_SEED, args.seed, index, a])
            subject = pool[(index + a) % len(pool)]
            image = render_scene(subject, rng, distractor_pool=pool).image
            for name, run in runs.items():
                absent[name].append(int(run(image, target).max()))
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
    if args.absent:
        print(
            f"{len(absent['suppress (ours)'])} images without the object ({args.absent} per object):"
        )
        print(f"{'method':24s} {'<=1 inst':>9s} {'false/img':>10s} {'FP rate':>8s}")
        for name, counts in absent.items():
            counts = np.array(counts)
            print(
                f"{name:24s} {np.mean(counts <= 1):9.3f} {counts.mean():10.2f} "
                f"{np.mean(counts > 1):8.3f}"
            )
    (t_ours, r_ours), (t_comm, r_comm) = res["suppress (ours)"], res["black out + re-encode"]
    print(
        f"time ratio (re-encode / ours): {t_comm / t_ours:.2f}x; recall ratio (ours / "
        f"re-encode): {r_ours['recall'] / max(r_comm['recall'], 1e-12):.2f}"
    )


if __name__ == "__main__":
    main()
