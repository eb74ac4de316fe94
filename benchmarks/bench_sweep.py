"""Cost of a 4-variant ablation sweep against a single run on the same data.

Both are real `python -m persam.run` subprocesses (basic launcher, one process per command)
starting from an empty embedding cache; the sweep's jobs share the cache (each image is
encoded once for the whole sweep) and the loaded backbone. Prints medians and their ratio.

    python benchmarks/bench_sweep.py                       # tiny (golden architecture)
    python benchmarks/bench_sweep.py --backbone vit_b      # SAM ViT-B architecture (random init)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = "ablation=c1_positive,c3_refine,no_guided,c5_semantic"


def timed(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "persam.run", *args], env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny", help="tiny, vit_b, vit_l, vit_h, embedded")
    parser.add_argument("--checkpoint", default=None, help="weights (random init when absent)")
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--images", type=int, default=3, help="images per object")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="persam-bench-"))
    env = dict(os.environ, PERSAM_CACHE_DIR=str(work / "cache"), WANDB_MODE="disabled")
    ckpt = (
        f"backbone.checkpoint={args.checkpoint}" if args.checkpoint else "backbone.checkpoint=null"
    )
    common = [
        f"backbone={args.backbone}",
        ckpt,
        f"data.num_objects={args.objects}",
        f"data.images_per_object={args.images}",
        "logger=none",
        "progress=false",
    ]
    # generate the synthetic data once, outside the timings
    timed(
        [
            *common,
            "method.refine_steps=0",
            "cache.enabled=false",
            f"hydra.run.dir={work / 'warmup'}",
        ],
        env,
    )

    single, sweep = [], []
    for i in range(args.repeats):
        shutil.rmtree(work / "cache" / "embeddings", ignore_errors=True)
        single.append(timed([*common, f"hydra.run.dir={work / f'single{i}'}"], env))
        shutil.rmtree(work / "cache" / "embeddings", ignore_errors=True)
        sweep.append(timed(["-m", *common, VARIANTS, f"hydra.sweep.dir={work / f'sweep{i}'}"], env))
        print(
            f"repeat {i}: single {single[-1]:.1f} s, 4-variant sweep {sweep[-1]:.1f} s", flush=True
        )

    s, m = statistics.median(single), statistics.median(sweep)
    n = args.objects * args.images
    print(
        f"\nbackbone={args.backbone}  images={n}  repeats={args.repeats}  threads={os.cpu_count()}"
    )
    print(f"single run          median {s:7.1f} s")
    print(f"4-variant sweep     median {m:7.1f} s")
    print(f"ratio sweep/single         {m / s:7.2f}x   (target <= 1.5x)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
