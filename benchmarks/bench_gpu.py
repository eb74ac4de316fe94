"""GPU figures of issue 14 in one run (needs CUDA; run through ``benchmarks/gpu_check.sh``).

Prints medians and ratios measured side by side on the same GPU:

1. the PerSAM-F fit on the golden cat (tiny SAM on CUDA): the official loop (decoder rerun every
   step, ``--official-steps`` of 1000, extrapolated) against ``fit_scale_weights`` with a GPU
   Trainer (``loop="trainer"``) for each backend (taylor: moments on the CPU; fused: Triton kernel; reference:
   autograd on the GPU); goal: under 0.2 s per object (official ~10 s on a GPU);
2. the image encoder of a ViT-H SAM (random weights, timing only), fp32 and bf16 (autocast);
3. PerSAM per image (learn once, segment each image, encoder included) on the tiny SAM and on
   the random ViT-H, fp32 and bf16.

Each section runs even if an earlier one failed (its error is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
DEFAULT_GOLDEN = Path(os.environ.get("PERSAM_GOLDEN", REPO.parent / "shared" / "golden"))


def med(xs) -> float:
    return statistics.median(xs)


def cuda_time(fn, repeats: int, warmup: int = 2) -> list[float]:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def vit_h_arch() -> dict:
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "backbone" / "vit_h.yaml"))
    return {
        k: v
        for k, v in cfg.items()
        if k not in ("_target_", "name", "checkpoint", "seed", "device")
    }


def section_fit(args, out) -> None:
    import numpy as np
    import torch
    from bench_persam_f_fit import load_reference, official_seconds

    from persam.model.scale_weights import fit_scale_weights

    predict, gt, ref = load_reference(args.golden, "cat", device="cuda")
    logits = torch.as_tensor(predict())
    import functools

    import lightning as L

    trainer = functools.partial(L.Trainer, accelerator="gpu", devices=1)
    backends = ["taylor", "fused", "reference"]
    for b in backends:  # compile / first-use outside the rounds
        r = fit_scale_weights(logits.cuda(), gt, backend=b, loop="trainer", trainer=trainer)
        print(f"   {b}: first fit {r.fit_seconds:.3f} s, compile {r.compile_seconds:.2f} s")
    off, ours, last = [], {b: [] for b in backends}, {}
    for _ in range(args.rounds):
        off.append(
            official_seconds(
                predict, gt, args.official_steps, device="cuda", sync=torch.cuda.synchronize
            )[0]
        )
        for b in backends:
            r = fit_scale_weights(logits.cuda(), gt, backend=b, loop="trainer", trainer=trainer)
            ours[b].append(r.fit_seconds)
            last[b] = r
    print(f"official loop on the GPU (1000 steps): median {med(off):.2f} s")
    out["fit"] = {"official_s": off}
    for b in backends:
        dw = float(np.abs(last[b].weights - ref["weights"]).max())
        print(
            f"{b:>9}: fit median {med(ours[b]):.3f} s, official/ours {med(off) / med(ours[b]):.1f}x,"
            f" max |w - golden| {dw:.1e} (goal: < 0.2 s)"
        )
        out["fit"][b] = {"fit_s": ours[b], "max_abs_w_golden": dw}


def section_encoder(args, out) -> None:
    import torch

    from persam.backbones.sam import build_sam

    sam = build_sam(name="vit_h", checkpoint=None, device="cuda", **vit_h_arch())
    x = torch.randn(1, 3, 1024, 1024, device="cuda")
    res = {}
    with torch.no_grad():
        res["fp32"] = cuda_time(lambda: sam.image_encoder(x), args.repeats)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            res["bf16"] = cuda_time(lambda: sam.image_encoder(x), args.repeats)
    print(
        f"ViT-H encoder (1 x 1024^2): fp32 median {med(res['fp32']) * 1e3:.1f} ms, bf16 "
        f"{med(res['bf16']) * 1e3:.1f} ms, fp32/bf16 {med(res['fp32']) / med(res['bf16']):.2f}x"
    )
    out["encoder_vit_h"] = res


def section_persam(args, out) -> None:
    import json as _json

    import cv2
    import torch

    from persam.backbones.sam import build_sam
    from persam.model.encoder import Encoder
    from persam.model.method import PerSAM

    def rgb(p):
        return cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)

    data = args.golden / "perseg-mini"
    ref_img, ref_mask = rgb(data / "Images/cat/00.jpg"), rgb(data / "Annotations/cat/00.png")
    queries = [rgb(data / f"Images/cat/{n}.jpg") for n in ("01", "02")]
    tiny = _json.loads((args.golden / "tiny_sam.json").read_text())
    sams = {
        "tiny": build_sam(
            name="tiny", checkpoint=args.golden / "tiny_sam.pth", device="cuda", **tiny
        ),
        "vit_h(random)": build_sam(name="vit_h", checkpoint=None, device="cuda", **vit_h_arch()),
    }
    out["persam_per_image"] = {}
    for name, sam in sams.items():
        method = PerSAM(sam, Encoder(sam))  # no embedding cache: the encoder runs
        target = method.learn(ref_img, ref_mask)
        for precision in ("fp32", "bf16"):

            def run(method=method, target=target, bf16=precision == "bf16"):
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                    for q in queries:
                        method.segment(q, target)

            times = [t / len(queries) for t in cuda_time(run, args.repeats, warmup=1)]
            print(f"PerSAM per image, {name}, {precision}: median {med(times) * 1e3:.1f} ms")
            out["persam_per_image"][f"{name}/{precision}"] = times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--golden", type=Path, default=DEFAULT_GOLDEN)
    p.add_argument("--official-steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU")
        return 2
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    out: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    failed = 0
    for section in (section_fit, section_encoder, section_persam):
        print(f"== {section.__name__}")
        try:
            section(args, out)
        except Exception:  # noqa: BLE001 - report and go on to the next figure
            failed += 1
            traceback.print_exc()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
