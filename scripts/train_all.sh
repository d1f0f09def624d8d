#!/usr/bin/env bash
# Reproduce every shipped generator from the prepared data, one command per stage and method.
#   scripts/train_all.sh [cpu|paper]        (default: cpu, the 2-core recipe the committed weights came from)
# Each command resumes from runs/<name>/checkpoint.pt when interrupted, and is a no-op once complete.
# Prerequisites: python -m training.prepare && python -m training.filter_pool
set -euo pipefail
recipe=${1:-cpu}
cd "$(dirname "$0")/.."
train() {  # name (the run: runs/NAME, weights/NAME) config [init [--set KEY=VALUE ...]]
  local name=$1 config=$2 init=${3:-}
  shift $(( $# < 3 ? $# : 3 ))
  python -m training.train --config "training/configs/$config.toml" --recipe "$recipe" \
    --out "runs/$name" --publish "weights/$name" ${init:+--init "weights/$init/generator.pt"} "$@"
}
train stage1 stage1
train iafsr iafsr stage1
train srnet srnet stage1
train sr_angle sr_angle stage1
train sr_ou sr_ou stage1
train srgan srgan stage1
train stage1_shift stage1_shift
train iafsr_shift iafsr_shift stage1_shift
train srnet_shift srnet_shift stage1_shift
train sr_angle_shift sr_angle_shift stage1_shift
train sr_ou_shift sr_ou_shift stage1_shift
train srgan_shift srgan_shift stage1_shift
if [[ $recipe == cpu ]]; then  # a longer stage 1 for the edge-shift variant: 3 more epochs from stage1_shift
  train stage1_shift_long stage1_shift_long stage1_shift
  train iafsr_shift_long iafsr_shift stage1_shift_long
  train srnet_shift_long srnet_shift stage1_shift_long
  train iafsr_balanced iafsr_balanced stage1_shift_long  # β1 = 1000, β2 = 0.1
  # the same balance, stage 2 twice as long
  train iafsr_balanced_long iafsr_balanced stage1_shift_long --set epochs=6 --set snapshot_every=542
  # the shipped model: 6 more epochs of stage 2 from there (the learning rate's cosine restarted)
  train iafsr_balanced_longer iafsr_balanced iafsr_balanced_long --set epochs=6 --set snapshot_every=542
fi
