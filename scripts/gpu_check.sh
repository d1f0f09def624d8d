#!/usr/bin/env bash
# GPU check of iafsr's native kernels, for a machine with an NVIDIA GPU (e.g. an H100) and no network:
# builds the package with CUDA required (IAFSR_CUDA=1) and installs it into a fresh directory put first on
# PYTHONPATH (the machine's own Python, often itself a virtual environment, keeps its torch / cupy), checks
# that CUDA is usable, runs the kernel tests (CPU and CUDA cases, and the fuzz) and the kernel benchmarks
# (CPU and GPU), and writes every log into LOG_DIR.
#
#   scripts/gpu_check.sh [LOG_DIR]      LOG_DIR defaults to $OUT, else ./gpu_check_logs
#
# Needs on that machine: python3 with numpy, torch (CUDA build) and/or cupy-cuda13x, pytest, hypothesis,
# setuptools, pybind11; nvcc (CUDA 12.x/13.x) on PATH or CUDA_HOME. Optional: IAFSR_SANITIZE=1 also runs the
# CUDA tests under compute-sanitizer (memcheck). Exit status: non-zero if the build, a test or a benchmark fails.
set -euo pipefail

cd "$(dirname "$0")/.."
LOG_DIR="$(mkdir -p "${1:-${OUT:-gpu_check_logs}}" && cd "${1:-${OUT:-gpu_check_logs}}" && pwd)"
PYTHON="${PYTHON:-python3}"
SITE="${SITE:-$(mktemp -d)/site}"
export PYTHONUNBUFFERED=1

exec > >(tee "$LOG_DIR/gpu_check.log") 2>&1
echo "== $(date -u +%FT%TZ) gpu_check in $(pwd), logs in $LOG_DIR"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "nvidia-smi not available"
command -v nvcc && nvcc --version | tail -n 2 || echo "nvcc not on PATH (CUDA_HOME=${CUDA_HOME:-unset})"

echo "== build with IAFSR_CUDA=1 and install into $SITE (no network: no build isolation, no dependencies)"
IAFSR_CUDA=1 IAFSR_BUILD_JOBS="$(nproc)" "$PYTHON" -m pip install -v --no-build-isolation --no-deps --no-index \
  --target "$SITE" . > "$LOG_DIR/build.log" 2>&1 || { tail -n 60 "$LOG_DIR/build.log"; echo "build failed"; exit 1; }
grep "iafsr build:" "$LOG_DIR/build.log" || true
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

# PYTHONSAFEPATH: the checkout's own iafsr_sdk (no compiled _C) must not shadow the one just installed.
echo "== build info and CUDA status"
PYTHONSAFEPATH=1 "$PYTHON" - <<'PY' | tee "$LOG_DIR/build_info.json"
import json
from iafsr_sdk import _ext
info = _ext.build_info()
print(json.dumps({**info, "cuda_status": _ext.cuda_status()}, indent=2))
assert info["built"] and info["cuda"], "the extension was not built with CUDA"
assert _ext.cuda_available(), f"built with CUDA but CUDA is not usable: {_ext.cuda_status()}"
PY

echo "== kernel tests (CPU and CUDA cases) and fuzz"
PYTHONSAFEPATH=1 "$PYTHON" -m pytest -p no:cacheprovider -v -rs tests/test_ops.py tests/test_ops_fuzz.py \
  --junitxml "$LOG_DIR/pytest.xml" 2>&1 | tee "$LOG_DIR/pytest.log"
if grep -q "SKIPPED.*CUDA" "$LOG_DIR/pytest.log"; then
  echo "CUDA tests were skipped although CUDA is usable"
  exit 1
fi

if [[ "${IAFSR_SANITIZE:-0}" == "1" ]] && command -v compute-sanitizer > /dev/null; then
  echo "== CUDA tests under compute-sanitizer memcheck"
  PYTHONSAFEPATH=1 compute-sanitizer --tool memcheck --error-exitcode 99 "$PYTHON" -m pytest -p no:cacheprovider -q -m cuda \
    tests/test_ops.py 2>&1 | tee "$LOG_DIR/sanitizer.log"
fi

echo "== benchmarks (CPU baselines and GPU)"
"$PYTHON" -m benchmarks.kernels --json "$LOG_DIR/kernels.json" 2>&1 | tee "$LOG_DIR/benchmarks.txt"

echo "== done: all steps passed"
