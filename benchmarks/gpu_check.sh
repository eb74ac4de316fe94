#!/usr/bin/env bash
# Issue 14's GPU checks in one go, on a CUDA machine with this repo's environment installed
# (PYTHON, default `python`) and the golden data at $PERSAM_GOLDEN (default ../shared/golden).
# Writes everything under ${OUT:-gpu_check_out}/: gpu.txt / gpu.json (fit, encoder, PerSAM per
# image: medians and ratios), run_persam_f/ and run_persam/ (trainer=gpu, backbone.device=cuda),
# gfsam.txt / gfsam.json (GF-SAM per episode against the official loop, on cuda: medians, ratio,
# mask IoU on the golden GF-SAM episodes).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-gpu_check_out}
GOLDEN=${PERSAM_GOLDEN:-$(cd .. && pwd)/shared/golden}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PERSAM_GOLDEN=$GOLDEN WANDB_MODE=offline PERSAM_CACHE_DIR=$OUT/cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# 1-3: timings (each section reports its own error and the next one still runs)
timeout 420 "$PY" benchmarks/bench_gpu.py --json "$OUT/gpu.json" 2>&1 | tee -a "$OUT/gpu.txt"
# 4: the GPU paths of the product, on the golden objects (weights checked against golden)
for method in persam_f persam; do
  loop=$([ $method = persam_f ] && echo method.scale_weights.loop=trainer)  # the fit on the GPU
  timeout 150 "$PY" -m persam.run method=$method trainer=gpu $loop backbone=tiny backbone.device=cuda \
    backbone.checkpoint="$GOLDEN/tiny_sam.pth" data=perseg data.root="$GOLDEN/perseg-mini" \
    logger=none hydra.run.dir="$OUT/run_$method" 2>&1 | tail -5 | tee -a "$OUT/gpu.txt"
done
# 5: GF-SAM per episode, the project's against the official loop, on the GPU (issue 25)
timeout 300 "$PY" benchmarks/bench_gfsam.py --device cuda --rounds 5 --json "$OUT/gfsam.json" \
  2>&1 | grep -v "^every reference\|^GF-SAM found" | tee "$OUT/gfsam.txt" | tee -a "$OUT/gpu.txt"
"$PY" - "$OUT" "$GOLDEN" <<'PYEOF' 2>&1 | tee -a "$OUT/gpu.txt"
import json, sys
import numpy as np
out, golden = sys.argv[1], sys.argv[2]
m = json.load(open(f"{out}/run_persam_f/metrics.json"))
for obj, e in m["objects"].items():
    ref = np.load(f"{golden}/reference/persam_f/{obj}.npz")["weights"]
    dw = float(np.abs(np.array(e["mask_weights"]) - ref).max())
    print(f"trainer=gpu {obj}: status {e['status']}, fit_seconds {e['fit_seconds']:.3f}, "
          f"max |w - golden| {dw:.1e} ({'ok' if dw < 1e-4 else 'MISMATCH'})")
PYEOF
