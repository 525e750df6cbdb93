#!/usr/bin/env bash
# One-shot GPU check: build with CUDA, run the self-check, the `cuda` tests and the sweeps, and
# collect everything into <out>/gpu_check.json (plus per-sweep JSON/CSV and logs beside it).
#
#   bash bench/gpu_check.sh OUT_DIR          # quick sweeps: the whole check fits in 10 minutes
#   bash bench/gpu_check.sh OUT_DIR --full   # every sweep at full size (tens of minutes)
#
# Every step runs under `timeout` (seconds below; a step that runs out counts as failed and the
# next one starts), so a hang costs one step, not the machine's lease: build 300, self-check 40,
# machine code 20, cuda tests 140, each quick sweep 20. Quick mode also has a budget for the whole
# check (GPU_CHECK_BUDGET, 570 s by default: one device call is 600 s): each step's limit is cut to
# what is left of it, and the steps it no longer reaches are reported as skipped.
#
# Wheels the machine lacks go in .whl/ and are installed first (into /tmp/site, on PYTHONPATH, so
# the build backend sees them too). The lent H200 image has torch 2.11 (cu130), nvcc 13.0, cmake,
# ninja, pytest, safetensors and tqdm, but not CUTLASS, and its setuptools may be old; carry both
# (.whl/ is git-ignored: pass it to the device run's `carry`):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#       nvidia-cutlass==4.2.0.0 setuptools==80.9.0 wheel
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUT_DIR [--full]}
mode=${2:-quick}
[ "$mode" = quick ] || [ "$mode" = --full ] || { echo "usage: bench/gpu_check.sh OUT_DIR [--full]" >&2; exit 2; }
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 GLM52_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
status=0
deadline=$(( $(date +%s) + ${GPU_CHECK_BUDGET:-570} ))
[ "$mode" = quick ] || deadline=0
step() { echo "== $1 ($(date +%T))" >&2; }
# run SECONDS CMD...: the command under a timeout (cut to the quick budget's remainder); a timeout,
# a failure or a step the budget no longer reaches marks the check failed.
run() {
  local limit=$1; shift
  if [ "$deadline" -gt 0 ]; then
    local left=$(( deadline - $(date +%s) - 10 ))
    if [ "$left" -le 0 ]; then echo "gpu_check: skipped (budget spent): $*" >&2; status=1; return 124; fi
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo "gpu_check: timed out after ${limit} s: $*" >&2; fi
  [ $rc -eq 0 ] || status=1
  return $rc
}

if compgen -G ".whl/*.whl" >/dev/null; then
  step "installing carried wheels"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

step "build"
start=$(date +%s)
run 300 python3 -m pip install --no-build-isolation --no-deps -e . >"$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
build_s=$(( $(date +%s) - start ))

step "self-check"
run 40 python3 -m glm52_ext.selfcheck >"$out/selfcheck.txt" 2>&1
cat "$out/selfcheck.txt"

step "machine code"
run 20 python3 -m glm52_ext.machine_code >"$out/machine_code.txt" 2>&1

step "cuda tests"
run 140 python3 -m pytest tests -m cuda -q -p no:cacheprovider --junitxml="$out/cuda_tests.xml" >"$out/cuda_tests.txt" 2>&1
tail -30 "$out/cuda_tests.txt"

for sweep in bench/bench_*.py; do
  step "sweep $sweep ($mode)"
  if [ "$mode" = --full ]; then
    run 1800 python3 "$sweep" --device cuda --out "$out/sweeps"
  else
    run 20 python3 "$sweep" --device cuda --quick --out "$out/sweeps"
  fi
done

step "collect"
python3 - "$out" "$build_s" "$status" "$mode" <<'PY'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
out, build_s, status = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
tests = {}
if (out / "cuda_tests.xml").exists():
    suite = ET.parse(out / "cuda_tests.xml").getroot().find("testsuite")
    tests = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
sweeps = {p.stem: json.loads(p.read_text()) for p in sorted((out / "sweeps").glob("*.json"))}
result = {"status": "ok" if status == 0 else "failed", "mode": sys.argv[4], "build_seconds": build_s, "cuda_tests": tests,
          "selfcheck": (out / "selfcheck.txt").read_text(), "sweeps": sweeps}
(out / "gpu_check.json").write_text(json.dumps(result, indent=1))
print(json.dumps({k: result[k] for k in ("status", "build_seconds", "cuda_tests")}))
PY
exit $status
