"""Benchmark the PerSAM-F scale-weight fit: the official loop vs `persam.scale_weights`.

On the golden cat (1282 x 1282, tiny SAM) it times

(a) the official loop of ``persam_f.py``: every step reruns ``SamPredictor.predict`` (decoder +
    upsampling to full resolution), mixes the three logits, autograd dice + focal, AdamW,
    cosine annealing (T_max = 1000). ``--official-steps N`` runs only the first N steps of that
    1000-step schedule and extrapolates the time linearly (the output says so);
(b) ``fit_scale_weights`` (fused loss + gradient, driven by a ``lightning.Trainer``): the first
    call of the process (cold: includes ``torch.compile``) and ``--repeats`` warm calls;
(c) optionally the same fused kernel in a plain Python loop (no Lightning), which gives
    Lightning's per-step overhead.

and prints medians, the speed-up, and the max abs differences of the learned weights and loss
curves between the two and against the golden reference. Wall and CPU (process) times are both
printed: on a shared machine CPU time is the steadier number.

    python benchmarks/bench_persam_f_fit.py                      # full official loop (~3-5 min)
    python benchmarks/bench_persam_f_fit.py --official-steps 50 --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_GOLDEN = Path(os.environ.get("PERSAM_GOLDEN", REPO.parent / "shared" / "golden"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--golden", type=Path, default=DEFAULT_GOLDEN)
    p.add_argument("--object", default="cat")
    p.add_argument("--steps", type=int, default=1000, help="fit length (official: 1000)")
    p.add_argument(
        "--official-steps",
        type=int,
        default=None,
        help="run only this many steps of the official loop and extrapolate (default: all)",
    )
    p.add_argument("--official-repeats", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="warm repeats of fit_scale_weights")
    p.add_argument("--fused", choices=["compile", "eager"], default="compile")
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: keep)"
    )
    p.add_argument(
        "--omp-wait-policy",
        choices=["inherit", "passive", "active"],
        default="inherit",
        help="set OMP_WAIT_POLICY before torch is imported (passive: no spin-waiting, much "
        "faster on a machine shared with other busy processes)",
    )
    p.add_argument(
        "--no-plain", action="store_true", help="skip the plain-loop (no Lightning) timing"
    )
    p.add_argument(
        "--fresh-cache",
        action="store_true",
        help="use an empty Inductor cache dir, so 'cold' includes the C++ compile",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    return p.parse_args(argv)


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main(argv=None) -> int:
    args = parse_args(argv)
    # Both must precede the first torch import.
    if args.fresh_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_cold_")
    if args.omp_wait_policy != "inherit":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    sys.path.insert(0, str(REPO))

    import cv2
    import numpy as np
    import torch
    from segment_anything import SamPredictor

    from persam.backbone import build_sam
    from persam.losses import dice_loss, focal_loss
    from persam.scale_weights import fit_scale_weights, fused_scale_loss, prepare_fused_inputs

    if args.threads:
        torch.set_num_threads(args.threads)
    golden = args.golden
    if not (golden / "reference" / "persam_f" / f"{args.object}.npz").is_file():
        print(f"golden outputs not found under {golden} (use --golden or PERSAM_GOLDEN)")
        return 2

    # ------------------------------------------------------------------ inputs (as official)
    ref = np.load(golden / "reference" / "persam_f" / f"{args.object}.npz")
    arch = json.loads((golden / "tiny_sam.json").read_text())
    sam = build_sam(name="tiny", checkpoint=golden / "tiny_sam.pth", device="cpu", **arch)
    predictor = SamPredictor(sam)
    image = cv2.cvtColor(
        cv2.imread(str(golden / "perseg-mini" / "Images" / args.object / "00.jpg")),
        cv2.COLOR_BGR2RGB,
    )
    mask = cv2.imread(str(golden / "perseg-mini" / "Annotations" / args.object / "00.png"))
    gt_np = cv2.cvtColor(mask, cv2.COLOR_BGR2RGB)[:, :, 0] > 0
    predictor.set_image(image)
    point, label = ref["ref_points"], np.array([1])

    def predict_logits() -> np.ndarray:
        with torch.no_grad():
            logits, _, _ = predictor.predict(
                point_coords=point, point_labels=label, multimask_output=True, return_logits=True
            )
        return logits

    logits = predict_logits()
    h, w = gt_np.shape
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"object {args.object}: {h}x{w} = {h * w / 1e6:.2f} M pixels; torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, load avg {load:.2f}"
    )

    # ------------------------------------------------------------------ (a) official loop
    steps = args.steps
    n_off = min(args.official_steps or steps, steps)
    gt_flat = torch.from_numpy(gt_np).float().reshape(1, -1)

    def official_loop():
        mw = torch.nn.Parameter(torch.ones(2, 1) / 3)
        opt = torch.optim.AdamW([mw], lr=1e-3, eps=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        losses = []
        for _ in range(n_off):
            high = torch.from_numpy(predict_logits()).flatten(1)  # decoder rerun, as official
            weights = torch.cat((1 - mw.sum(0).unsqueeze(0), mw), dim=0)
            mixed = (high * weights).sum(0).unsqueeze(0)
            loss = dice_loss(mixed, gt_flat) + focal_loss(mixed, gt_flat)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        final = torch.cat((1 - mw.sum(0).unsqueeze(0), mw), dim=0).detach().flatten().numpy()
        return final, np.array(losses, dtype=np.float32)

    off_wall, off_cpu = [], []
    for _ in range(max(1, args.official_repeats)):
        (off_w, off_losses), wall, cpu = timed(official_loop)
        off_wall.append(wall * steps / n_off)
        off_cpu.append(cpu * steps / n_off)
    extrap = f" (extrapolated x{steps / n_off:g} from {n_off} steps)" if n_off < steps else ""
    print(
        f"(a) official loop, {steps} steps{extrap}: wall median {statistics.median(off_wall):.1f} s"
        f", cpu {statistics.median(off_cpu):.1f} s  [{len(off_wall)} run(s); golden machine's "
        f"reference loop: {float(ref['fit_seconds_reference_loop']):.1f} s]"
    )

    # ------------------------------------------------------------------ (b) ours
    def ours():
        return fit_scale_weights(logits, gt_np, steps=steps, fused=args.fused)

    cold, cold_wall, cold_cpu = timed(ours)
    print(
        f"(b) fit_scale_weights cold (first call in process, incl. compile"
        f"{', empty Inductor cache' if args.fresh_cache else ''}): wall {cold_wall:.2f} s, "
        f"cpu {cold_cpu:.2f} s, backend {cold.backend}"
    )
    runs = [timed(ours) for _ in range(args.repeats)]
    warm_wall = [r[1] for r in runs]
    warm_cpu = [r[2] for r in runs]
    res = runs[-1][0] if runs else cold
    med = statistics.median(warm_wall) if runs else cold_wall
    if runs:
        print(
            f"    warm x{len(runs)}: wall median {med:.2f} s (min {min(warm_wall):.2f}, max "
            f"{max(warm_wall):.2f}), cpu median {statistics.median(warm_cpu):.2f} s; "
            f"{med / steps * 1e3:.2f} ms/step"
        )

    # ------------------------------------------------------------------ (c) plain loop
    if not args.no_plain:
        inputs = prepare_fused_inputs(logits, gt_np)

        def plain():
            mw = torch.nn.Parameter(torch.ones(2, 1) / 3)
            opt = torch.optim.AdamW([mw], lr=1e-3, eps=1e-4)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
            for _ in range(steps):
                loss = fused_scale_loss(mw, inputs, fused=args.fused)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()

        plain_runs = [timed(plain) for _ in range(max(1, min(3, args.repeats)))]
        p_med = statistics.median(r[1] for r in plain_runs)
        print(
            f"(c) fused kernel in a plain loop (no Lightning): wall median {p_med:.2f} s; "
            f"Lightning overhead ~{(med - p_med) / steps * 1e3:.2f} ms/step"
        )

    # ------------------------------------------------------------------ comparison
    ratio = statistics.median(off_wall) / med
    print(f"speed-up (official wall median / ours warm wall median): {ratio:.1f}x")
    golden_w = ref["weights"]
    print(f"weights ours     {np.array2string(res.weights, precision=7)}")
    print(f"weights golden   {np.array2string(golden_w, precision=7)}")
    d_golden = float(np.abs(res.weights - golden_w).max())
    d_gl = float(np.abs(res.losses - ref["losses"]).max())
    d_ol = float(np.abs(res.losses[:n_off] - off_losses).max())
    print(f"max |w_ours - w_golden| = {d_golden:.2e}; max |loss_ours - loss_golden| = {d_gl:.2e}")
    d_off = None
    if n_off == steps:
        print(f"weights official {np.array2string(off_w, precision=7)}")
        d_off = float(np.abs(res.weights - off_w).max())
        print(f"max |w_ours - w_official| = {d_off:.2e}; ", end="")
    else:
        print(
            f"(official loop ran {n_off} of {steps} steps: only the loss curves compare) ", end=""
        )
    print(f"max |loss_ours - loss_official| over {n_off} steps = {d_ol:.2e}")

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "object": args.object,
                    "pixels": h * w,
                    "threads": torch.get_num_threads(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                    "load_avg_start": load,
                    "official_steps_run": n_off,
                    "official_wall_s": off_wall,
                    "official_cpu_s": off_cpu,
                    "ours_cold_wall_s": cold_wall,
                    "ours_warm_wall_s": warm_wall,
                    "ours_warm_cpu_s": warm_cpu,
                    "speedup": ratio,
                    "max_abs_w_vs_golden": d_golden,
                    "max_abs_w_vs_official": d_off,
                    "max_abs_loss_vs_golden": d_gl,
                    "max_abs_loss_vs_official": d_ol,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
