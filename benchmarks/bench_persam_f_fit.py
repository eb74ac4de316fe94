"""Benchmark the PerSAM-F scale-weight fit against the official loop, side by side.

Every figure is a median over repeats, and every comparison a ratio of medians measured in the
same process, interleaved round by round (other processes share this machine's cores).

Modes (combine freely):

``--fit`` (default): on a golden object (tiny SAM; the cat is 1282 x 1282), each round times
  (a) the official loop of ``persam_f.py``: every step reruns ``SamPredictor.predict`` (decoder
      + upsampling), mixes the three logits, autograd dice + focal, AdamW, cosine annealing
      (``--official-steps N`` runs the first N of the 1000 steps and extrapolates linearly);
  (b) ``fit_scale_weights`` with each ``--backends`` (taylor, fused = compiled fused pass,
      eager = fused pass without compiler, reference = autograd through Lightning): its
      ``fit_seconds`` (``trainer.fit``; compilation, if any, is done before and not counted).
``--processes N``: the first fit in N fresh processes per backend, with an empty compile cache
  (cold: includes compiling) and with the cache the previous process left (warm).
``--run``: ``python -m persam.run method=persam_f backbone=tiny ... data=perseg`` on the golden
  objects in a fresh process, then the official loop on each object in this one: the
  ``fit_seconds`` of ``metrics.json`` against the official time, per object.

    python benchmarks/bench_persam_f_fit.py                         # ~2 min
    python benchmarks/bench_persam_f_fit.py --official-steps 1000 --rounds 3 --processes 3 --run

``OMP_WAIT_POLICY`` is set to PASSIVE (as ``persam.run`` does) unless set; threads are the
machine's default unless ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_GOLDEN = Path(os.environ.get("PERSAM_GOLDEN", REPO.parent / "shared" / "golden"))
OBJECTS = ("cat", "colorful_sneaker", "duck_toy")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--golden", type=Path, default=DEFAULT_GOLDEN)
    p.add_argument("--object", default="cat")
    p.add_argument("--official-steps", type=int, default=100, help="of 1000; extrapolated")
    p.add_argument("--rounds", type=int, default=3, help="interleaved repeats")
    p.add_argument("--backends", default="taylor,fused", help="comma-separated")
    p.add_argument("--no-fit", action="store_true", help="skip the in-process comparison")
    p.add_argument("--processes", type=int, default=0, help="fresh-process first fits per case")
    p.add_argument("--run", action="store_true", help="persam.run's metrics.json vs official")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    p.add_argument("--first-fit", action="store_true", help=argparse.SUPPRESS)  # child mode
    return p.parse_args(argv)


def med(xs) -> float:
    return statistics.median(xs)


def load_reference(golden: Path, obj: str, device: str = "cpu"):
    """``predict`` (the official decoder call at the golden point -> (3, H, W) numpy logits),
    the reference mask (H, W) bool and the golden record of a golden object."""
    import cv2
    import numpy as np
    import torch
    from segment_anything import SamPredictor

    from persam.backbones.sam import build_sam

    ref = np.load(golden / "reference" / "persam_f" / f"{obj}.npz")
    arch = json.loads((golden / "tiny_sam.json").read_text())
    sam = build_sam(name="tiny", checkpoint=golden / "tiny_sam.pth", device=device, **arch)
    predictor = SamPredictor(sam)
    image = cv2.imread(str(golden / "perseg-mini" / "Images" / obj / "00.jpg"))
    mask = cv2.imread(str(golden / "perseg-mini" / "Annotations" / obj / "00.png"))
    gt = cv2.cvtColor(mask, cv2.COLOR_BGR2RGB)[:, :, 0] > 0
    predictor.set_image(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    point, label = ref["ref_points"], np.array([1])

    def predict():
        with torch.no_grad():
            logits, _, _ = predictor.predict(
                point_coords=point, point_labels=label, multimask_output=True, return_logits=True
            )
        return logits

    return predict, gt, ref


def official_seconds(
    predict, gt, n_steps: int, total: int = 1000, device: str = "cpu", sync=None
) -> float:
    """Wall and process CPU time of the official loop's first ``n_steps`` of ``total``,
    extrapolated to all ``total`` steps."""
    import torch

    from persam.model.losses import dice_loss, focal_loss

    target = torch.from_numpy(gt).float().reshape(1, -1).to(device)
    mw = torch.nn.Parameter(torch.ones(2, 1, device=device) / 3)
    opt = torch.optim.AdamW([mw], lr=1e-3, eps=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n_steps):
        high = torch.from_numpy(predict()).to(device).flatten(1)  # decoder rerun, as official
        weights = torch.cat((1 - mw.sum(0).unsqueeze(0), mw), dim=0)
        mixed = (high * weights).sum(0).unsqueeze(0)
        loss = dice_loss(mixed, target) + focal_loss(mixed, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        loss.item()
    if sync is not None:
        sync()
    scale = total / n_steps
    return (time.perf_counter() - t0) * scale, (time.process_time() - c0) * scale


def fit_once(logits, gt, backend: str):
    """The fit's result, with ``cpu_seconds`` (process CPU time of the whole call) added."""
    from persam.model.scale_weights import fit_scale_weights

    kw = {"backend": "fused", "fused": "eager"} if backend == "eager" else {"backend": backend}
    c0 = time.process_time()
    res = fit_scale_weights(logits, gt, **kw)
    res.cpu_seconds = time.process_time() - c0
    return res


def bench_fit(args, out: dict) -> None:
    import numpy as np

    predict, gt, ref = load_reference(args.golden, args.object)
    logits = predict()
    backends = [b for b in args.backends.split(",") if b]
    h, w = gt.shape
    print(f"== fit: {args.object} {h}x{w}, official {args.official_steps}/1000 steps per round")
    for b in backends:  # compile (if any) and first-use costs, outside the rounds
        r = fit_once(logits, gt, b)
        print(f"   {b}: first fit {r.fit_seconds:.2f} s, compile {r.compile_seconds:.2f} s")
    off, off_cpu = [], []
    ours, ours_cpu = {b: [] for b in backends}, {b: [] for b in backends}
    results = {}
    for rnd in range(args.rounds):
        wall, cpu = official_seconds(predict, gt, args.official_steps)
        off.append(wall)
        off_cpu.append(cpu)
        line = f"   round {rnd + 1}: official {wall:.1f} s (cpu {cpu:.1f})"
        for b in backends:
            res = fit_once(logits, gt, b)
            ours[b].append(res.fit_seconds)
            ours_cpu[b].append(res.cpu_seconds)
            results[b] = res
            line += f" | {b} {res.fit_seconds:.2f} s (cpu {res.cpu_seconds:.2f})"
        print(line)
    print(
        f"official loop (1000 steps): wall median {med(off):.1f} s, cpu median {med(off_cpu):.1f} s"
        f" over {len(off)} rounds"
    )
    out["fit"] = {"object": args.object, "official_s": off, "official_cpu_s": off_cpu}
    out["fit"]["backends"] = {}
    for b in backends:
        res = results[b]
        dw = float(np.abs(res.weights - ref["weights"]).max())
        dl = float(np.abs(res.losses - ref["losses"]).max())
        ratios = [o / x for o, x in zip(off, ours[b], strict=True)]
        print(
            f"{b:>9}: fit wall median {med(ours[b]):.2f} s, cpu median {med(ours_cpu[b]):.2f} s; "
            f"official/ours: wall {med(off) / med(ours[b]):.1f}x (median of rounds "
            f"{med(ratios):.1f}x), cpu {med(off_cpu) / med(ours_cpu[b]):.1f}x; "
            f"max |w - golden| {dw:.1e}, max |loss - golden| {dl:.1e}"
        )
        out["fit"]["backends"][b] = {
            "fit_s": ours[b],
            "cpu_s": ours_cpu[b],
            "ratio_wall": med(off) / med(ours[b]),
            "ratio_cpu": med(off_cpu) / med(ours_cpu[b]),
        }


def first_fit_child(args) -> None:
    """Child process: the first fit of a fresh process; prints one JSON line."""
    t0 = time.perf_counter()
    import numpy as np  # noqa: F401
    import torch

    t_import = time.perf_counter() - t0
    predict, gt, _ = load_reference(args.golden, args.object)
    logits = torch.as_tensor(predict())
    backend = args.backends.split(",")[0]
    res = fit_once(logits, gt, backend)
    print(
        json.dumps(
            {
                "fit_s": res.fit_seconds,
                "compile_s": res.compile_seconds,
                "first_fit_total_s": res.fit_seconds + res.compile_seconds,
                "import_s": t_import,
                "backend": res.backend,
            }
        )
    )


def bench_processes(args, out: dict) -> None:
    print(f"== first fit in a fresh process ({args.processes} per case, {args.object})")
    out["processes"] = {}
    for backend in [b for b in args.backends.split(",") if b]:
        for cache in ("cold", "warm"):
            rows = []
            for _ in range(args.processes):
                env = dict(os.environ, PYTHONPATH=str(REPO))
                if cache == "cold":
                    env["PERSAM_CACHE_DIR"] = tempfile.mkdtemp(prefix="persam_cold_")
                    env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_cold_")
                else:  # the cache a previous process of this benchmark filled
                    env["PERSAM_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / "persam_bench")
                    env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_warm_")
                    if not rows:  # fill it once
                        _child(args, env, backend)
                rows.append(_child(args, env, backend))
            fit = med(r["fit_s"] for r in rows)
            comp = med(r["compile_s"] for r in rows)
            tot = med(r["first_fit_total_s"] for r in rows)
            print(
                f"{backend:>9} {cache} cache: compile median {comp:.2f} s, fit {fit:.2f} s, "
                f"first fit in all {tot:.2f} s  [{len(rows)} processes]"
            )
            out["processes"][f"{backend}/{cache}"] = rows


def _child(args, env, backend) -> dict:
    cmd = [sys.executable, __file__, "--first-fit", "--object", args.object]
    cmd += ["--golden", str(args.golden), "--backends", backend]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_run(args, out: dict) -> None:
    print("== persam.run method=persam_f (fresh process) vs the official loop, per object")
    run_dir = Path(tempfile.mkdtemp(prefix="persam_run_"))
    cmd = [
        sys.executable, "-m", "persam.run", "method=persam_f", "backbone=tiny",
        f"backbone.checkpoint={args.golden / 'tiny_sam.pth'}", "data=perseg",
        f"data.root={args.golden / 'perseg-mini'}", "logger=none", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=REPO)
    wall = time.perf_counter() - t0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out["run"] = {"wall_s": wall, "objects": {}}
    ratios = []
    for obj in OBJECTS:
        entry = metrics["objects"][obj]
        predict, gt, _ = load_reference(args.golden, obj)
        offs = [official_seconds(predict, gt, args.official_steps)[0] for _ in range(args.rounds)]
        ratio = med(offs) / entry["fit_seconds"]
        ratios.append(ratio)
        print(
            f"{obj:>17}: fit_seconds {entry['fit_seconds']:.2f} s (compile "
            f"{entry.get('compile_seconds', 0):.2f} s); official median {med(offs):.1f} s "
            f"[{len(offs)}x {args.official_steps} steps]; ratio {ratio:.1f}x"
        )
        out["run"]["objects"][obj] = {"fit_s": entry["fit_seconds"], "official_s": offs}
    print(f"run wall {wall:.1f} s; median ratio over objects {med(ratios):.1f}x")


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported
    sys.path.insert(0, str(REPO))
    if not (args.golden / "reference" / "persam_f" / f"{args.object}.npz").is_file():
        print(f"golden outputs not found under {args.golden} (use --golden or PERSAM_GOLDEN)")
        return 2
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.first_fit:
        first_fit_child(args)
        return 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
        f"load avg {load:.2f}"
    )
    out: dict = {"load_avg_start": load, "threads": torch.get_num_threads()}
    if not args.no_fit:
        bench_fit(args, out)
    if args.processes:
        bench_processes(args, out)
    if args.run:
        bench_run(args, out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
