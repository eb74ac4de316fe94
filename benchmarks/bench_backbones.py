"""Encoder and decoder time per backbone, side by side in one process (random weights).

    python benchmarks/bench_backbones.py                       # every backbone whose extra is installed
    python benchmarks/bench_backbones.py --backbones mobile_sam,vit_b --repeats 5 --threads 2

Each backbone is built from its config (`backbone=<name> backbone.checkpoint=random`); the
encoder is timed as `predictor.set_image` on a 768 x 1024 image (resize, normalise, encode), the
decoder as one `predictor.predict` with a positive and a negative point (prompt encoder, mask
decoder, upscaling to the image). Prints medians and the ratio to the first backbone listed.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from persam.conf import CONFIG_DIR
from persam.model.encoder import Encoder

# backbone -> the module its optional dependency group provides (None: always there)
BACKBONES = {
    "vit_b": None,
    "mobile_sam": "mobile_sam",
    "efficientvit_sam_l0": "efficientsam",
    "efficientvit_sam_xl0": "efficientsam",
    "hf_sam": "transformers",
    "sam2_hiera_t": "sam2",
}


def build(name: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"backbone={name}", "backbone.checkpoint=random"])
    return instantiate(cfg.backbone, device="cpu")


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = np.random.default_rng(0).integers(0, 255, (768, 1024, 3), dtype=np.uint8)
    points = dict(point_coords=np.array([[500, 400], [100, 700]]), point_labels=np.array([1, 0]))
    rows = []
    for name in args.backbones.split(","):
        module = BACKBONES.get(name)
        if module is not None and importlib.util.find_spec(module) is None:
            print(f"{name}: skipped (its extra is not installed: no module {module})")
            continue
        sam = build(name)
        predictor = Encoder(sam).predictor
        with torch.no_grad():
            predictor.set_image(image)  # warm-up
            encode = median_seconds(lambda p=predictor: p.set_image(image), args.repeats)
            predictor.predict(**points, multimask_output=False)
            decode = median_seconds(
                lambda p=predictor: p.predict(**points, multimask_output=False), args.repeats * 5
            )
        params = sum(p.numel() for p in sam.image_encoder.parameters()) / 1e6
        rows.append((name, params, encode, decode))
        del sam, predictor
    if not rows:
        return
    print(
        f"\n{args.threads} thread(s), median of {args.repeats} encodes / {args.repeats * 5} decodes"
    )
    print(
        f"{'backbone':24s} {'encoder M':>9s} {'encode s':>9s} {'x':>6s} {'decode ms':>10s} {'x':>6s}"
    )
    _, _, enc0, dec0 = rows[0]
    for name, params, enc, dec in rows:
        print(
            f"{name:24s} {params:9.1f} {enc:9.3f} {enc / enc0:6.2f} {1000 * dec:10.1f} {dec / dec0:6.2f}"
        )


if __name__ == "__main__":
    main()
