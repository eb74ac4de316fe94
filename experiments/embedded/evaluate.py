"""Evaluate the embedded SAM on the held-out synthetic split: PerSAM, PerSAM-F, the component
ablation and the ground-truth-prompt oracle; writes results.json and prints a markdown table.

    python experiments/embedded/evaluate.py [--out experiments/embedded/results.json] [OVERRIDE ...]

Every row is one `python -m persam.run backbone=embedded ...` (real subprocesses; `logger=none
overlays=false` only skip writing files that do not change the metrics), plus
`experiments/embedded/oracle.py`. Extra arguments are Hydra overrides given to every run
(e.g. `backbone.checkpoint=outputs/train/.../embedded_sam.pth`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE = ["backbone=embedded", "logger=none", "overlays=false", "progress=false"]
RUNS: dict[str, list[str]] = {
    "PerSAM": ["method=persam"],
    "PerSAM-F": ["method=persam_f"],
    "PerSAM, no negative point": ["method=persam", "method.negative_point=false"],
    "PerSAM, no guided attention": ["method=persam", "method.guided_attention=false"],
    "PerSAM, no semantic prompt": ["method=persam", "method.semantic_prompt=false"],
    "PerSAM, no refinement": ["method=persam", "method.refine_steps=0"],
    "PerSAM, one refinement pass": ["method=persam", "method.refine_steps=1"],
    "PerSAM, location prior only (all four off)": [
        "method=persam",
        "method.negative_point=false",
        "method.guided_attention=false",
        "method.semantic_prompt=false",
        "method.refine_steps=0",
    ],
}


def run(name: str, overrides: list[str], out_dir: Path) -> dict:
    run_dir = out_dir / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
    args = [*BASE, *overrides, f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "persam.run", *args], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "command": "python -m persam.run " + " ".join(a for a in args if "hydra.run" not in a),
        "miou": metrics["miou"],
        "mbiou": metrics["mbiou"],
        "macc": metrics["macc"],
        "objects": {k: v["iou"] for k, v in metrics["objects"].items()},
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "experiments/embedded/results.json")
    parser.add_argument("--only", nargs="*", default=None, help="names of the rows to run")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="persam-eval-") as tmp:
        for name, overrides in RUNS.items():
            if args.only and name not in args.only:
                continue
            results[name] = run(name, [*overrides, *args.overrides], Path(tmp))
            r = results[name]
            print(f"{name:45s} mIoU {100 * r['miou']:6.2f}  ({r['seconds']:.0f} s)", flush=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from oracle import oracle

    orc = oracle(list(args.overrides))
    results["oracle"] = orc
    for v, r in orc["variants"].items():
        print(f"oracle {v:38s} mIoU {100 * r['miou']:6.2f}")
    print(f"location prior hit rate {100 * orc['prior_hit']:.1f}%")
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    print("\n| run | mIoU | mBIoU | mAcc |\n|---|---|---|---|")
    for name, r in results.items():
        if name != "oracle":
            print(
                f"| {name} | {100 * r['miou']:.2f} | {100 * r['mbiou']:.2f} | {100 * r['macc']:.2f} |"
            )
    for v, r in orc["variants"].items():
        print(
            f"| oracle: {v} | {100 * r['miou']:.2f} | {100 * r['mbiou']:.2f} | {100 * r['macc']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
