#!/usr/bin/env bash
# The shipped embedded model (persam/weights/embedded_sam.pth), trained from scratch as the chain
# its record lists (persam/weights/embedded_sam.md, "Training chain"). One command:
#   bash experiments/embedded/train.sh [OUT]        # default OUT: outputs/train/embedded
# Stage 1 (v1, 3100 steps, SAM's min-over-three multimask loss) is the previously shipped model;
# stage 2 continues from it with the nested part/object/group multimask targets. On the 2-core
# CPU: ~46 + ~95 min. With a GPU add trainer=gpu to both (minutes; the numbers will differ
# slightly from the CPU run's).
# Runs `python` (the active venv); PYTHON=.venv/bin/python picks another interpreter.
set -euo pipefail
OUT=${1:-outputs/train/embedded}
PY=${PYTHON:-python}
$PY -m persam.train train.module.multimask=min progress=false "hydra.run.dir=$OUT/stage1"
$PY -m persam.train "train.init_from=$OUT/stage1/embedded_sam.pth" trainer.max_steps=6500 \
    train.threads=2 progress=false "hydra.run.dir=$OUT/stage2" "${@:2}"
echo "trained: $OUT/stage2/embedded_sam.pth (export: cp $OUT/stage2/embedded_sam.{pth,json,md} persam/weights/)"
