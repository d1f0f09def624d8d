#!/usr/bin/env bash
# Stage 2 of the shipped recipe (training/configs/iafsr_balanced.toml, the paper's schedule: batch 128) on one
# GPU, from a training bundle made here by `python -m training.bundle pack` (the filtered pool and F, ≤ 36 MiB),
# starting from the committed stage 1 (weights/stage1_shift_long). Checkpoints, logs and the selected generator
# go to OUT/run; running the same command with the same OUT resumes (carry OUT/run back to a new machine).
#
#   scripts/gpu_train.sh BUNDLE [OUT] [STEPS] [-- training.train arguments ...]
#       OUT defaults to $OUT, else runs/gpu; STEPS to 3000 (about 40 epochs of the pool)
#
# Needs python3 with torch, numpy, pillow, tqdm and onnx; no network and no install: the trainer runs from
# this checkout (the native extension is optional for training). PYTHON overrides the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 && -f $1 ]] || { echo "usage: $0 BUNDLE [OUT] [STEPS] [-- extra training.train arguments]" >&2; exit 2; }
bundle=$(realpath "$1"); shift
out=${1:-${OUT:-runs/gpu}}; [[ $# -gt 0 && $1 != -- ]] && shift
steps=${1:-3000}; [[ $# -gt 0 && $1 != -- ]] && shift
[[ ${1:-} == -- ]] && shift
mkdir -p "$out"; out=$(cd "$out" && pwd)
cache=${CACHE:-${TMPDIR:-/tmp}/iafsr_bundle_cache}  # 450 MB unpacked: kept out of OUT
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" IAFSR_SFACE_ONNX="$cache/sface.onnx" PYTHONUNBUFFERED=1

{
  echo "== $(date -u +%FT%TZ) gpu_train: $bundle → $out ($steps steps)"
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
  "$PYTHON" -m training.bundle unpack "$bundle" --cache "$cache"
  "$PYTHON" -m training.train --config training/configs/iafsr_balanced.toml --recipe paper --cache "$cache" \
    --out "$out/run" --init weights/stage1_shift_long/generator.pt --set "steps=$steps" \
    --publish "$out/published" "$@"
  echo "== $(date -u +%FT%TZ) done"
} 2>&1 | tee -a "$out/gpu_train.log"
