#!/usr/bin/env bash
# There, on a lent GPU machine, in one run (benchmarks/device/README.md): the aggregation tests,
# the gpu-marked ones included, against the CPU path, then figure 5. Everything lands in $OUT:
# machine.txt, tests.log, bench.log and bench_aggregation_gpu.json.
# Usage: bash benchmarks/device/gpu_check.sh [--quick]
# Exit codes: 0 all passed; 1 tests or benchmark failed; 2 no $OUT; 3 the wheels did not install.
set -uo pipefail
cd "$(dirname "$0")/../.."
[ -n "${OUT:-}" ] || { echo "set OUT to the folder for the results" >&2; exit 2; }
mkdir -p "$OUT"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
python=${DEVICE_PYTHON:-python3}
site=${DEVICE_SITE:-/tmp/site}
wheels=(.whl/*.whl)
[ -e "${wheels[0]}" ] || { echo "no wheels in .whl/: run benchmarks/device/fetch_wheels.sh here, carry .whl" >&2; exit 3; }
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}" \
  || exit 3
export PYTHONPATH="$site:$PWD"

{
  nvidia-smi || echo "nvidia-smi: not available"
  "$python" - <<'PY'
import sys

import numpy
import torch

try:
    import numba
    compiled = numba.__version__
except ImportError:
    compiled = "missing (the CPU kernel runs its NumPy loop)"
cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"python {sys.version.split()[0]}, torch {torch.__version__} ({cuda}), numpy {numpy.__version__}, numba {compiled}")
PY
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# pytest -p no:cacheprovider: the copy of the tree there is thrown away anyway.
timeout "${TESTS_TIMEOUT_S:-120}" "$python" -m pytest -p no:cacheprovider -q -rs tests/server/aggregation 2>&1 \
  | tee "$OUT/tests.log"
tests_rc=${PIPESTATUS[0]}
timeout "${BENCH_TIMEOUT_S:-300}" "$python" -m benchmarks.bench_aggregation_gpu "$@" --out "$OUT" 2>&1 \
  | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}
echo "aggregation tests exit $tests_rc, figure 5 exit $bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] || exit 1
