#!/usr/bin/env bash
# Every figure of experiments/embedded/RESULTS.md for one checkpoint, into one folder:
#   bash experiments/embedded/measure.sh [CHECKPOINT] [OUT]
# CHECKPOINT defaults to the shipped embedded model, OUT to outputs/embedded_measure/<time>.
# PerSeg-mini needs ../shared/golden/perseg-mini (three real PerSeg objects; skipped without it).
# Each block is a plain persam command; the sweeps' tables come from persam.report.
# Runs `python` (the active venv); PYTHON=.venv/bin/python picks another interpreter.
set -euo pipefail
CKPT=${1:-persam/weights/embedded_sam.pth}
OUT=${2:-outputs/embedded_measure/$(date -u +%Y-%m-%d_%H-%M-%S)}
PY=${PYTHON:-python}
COMMON=(backbone=embedded "backbone.checkpoint=$CKPT" logger=none overlays=false progress=false)
mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/commands.txt"; }

for n in 6 30; do
  log "PerSAM vs PerSAM-F, $n held-out objects"
  $PY -m persam.run -m experiment=persam_vs_persam_f data.num_objects=$n "${COMMON[@]}" \
      "hydra.sweep.dir=$OUT/persam_vs_persam_f_$n"
  $PY -m persam.report "$OUT/persam_vs_persam_f_$n" > /dev/null
  log "component ablation, $n held-out objects"
  $PY -m persam.run -m experiment=ablation_components data.num_objects=$n "${COMMON[@]}" \
      "hydra.sweep.dir=$OUT/ablation_components_$n"
  $PY -m persam.report "$OUT/ablation_components_$n" > /dev/null
  log "oracle (ground-truth point / box) and multimask scales, $n held-out objects"
  $PY experiments/embedded/oracle.py --out "$OUT/oracle_$n.json" data.num_objects=$n \
      "backbone.checkpoint=$CKPT" | tee "$OUT/oracle_$n.txt"
done

if [ -d ../shared/golden/perseg-mini ]; then
  log "three real PerSeg objects (../shared/golden/perseg-mini)"
  $PY -m persam.run -m method=persam,persam_f data=perseg data.root=../shared/golden/perseg-mini \
      "${COMMON[@]}" "hydra.sweep.dir=$OUT/perseg_mini"
  $PY -m persam.report "$OUT/perseg_mini" > /dev/null
fi

log "synthetic videos (J&F): both modes x both methods"
$PY -m persam.video -m method=persam,persam_f video=official,tracked \
    backbone=embedded "backbone.checkpoint=$CKPT" logger=none progress=false \
    "hydra.sweep.dir=$OUT/video"
$PY -m persam.report "$OUT/video" > /dev/null
log "synthetic videos: per-frame PerSAM baseline (no temporal prompt)"
$PY -m persam.video video.box_prompt=false video.center_point=false \
    backbone=embedded "backbone.checkpoint=$CKPT" logger=none progress=false \
    "hydra.run.dir=$OUT/video_per_frame"
echo "done: $OUT (report.md in each sweep folder)"
