#!/usr/bin/env bash
# One-shot GPU check: build with CUDA, run the self-check, the `cuda` tests and every sweep, and
# collect everything into <out>/gpu_check.json (plus per-sweep JSON/CSV and logs beside it).
#
#   bash bench/gpu_check.sh OUT_DIR
#
# Wheels the machine lacks may be put in .whl/; they are installed first. The lent H200 image has
# torch 2.11 (cu130), nvcc 13.0, cmake, ninja, pytest, safetensors and tqdm, but not CUTLASS:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl nvidia-cutlass==4.2.0.0
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 GLM52_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
status=0
step() { echo "== $1" >&2; }

if compgen -G ".whl/*.whl" >/dev/null; then
  step "installing carried wheels"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

step "build"
start=$(date +%s)
python3 -m pip install --no-build-isolation --no-deps -e . >"$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
build_s=$(( $(date +%s) - start ))

step "self-check"
python3 -m glm52_ext.selfcheck >"$out/selfcheck.txt" 2>&1 || status=1
cat "$out/selfcheck.txt"

step "machine code"
python3 -m glm52_ext.machine_code >"$out/machine_code.txt" 2>&1 || status=1

step "cuda tests"
python3 -m pytest tests -m cuda -q -p no:cacheprovider --junitxml="$out/cuda_tests.xml" 2>&1 | tail -30
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

for sweep in bench/bench_*.py; do
  step "sweep $sweep"
  python3 "$sweep" --device cuda --out "$out/sweeps" || status=1
done

step "collect"
python3 - "$out" "$build_s" "$status" <<'PY'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
out, build_s, status = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
tests = {}
if (out / "cuda_tests.xml").exists():
    suite = ET.parse(out / "cuda_tests.xml").getroot().find("testsuite")
    tests = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
sweeps = {p.stem: json.loads(p.read_text()) for p in sorted((out / "sweeps").glob("*.json"))}
result = {"status": "ok" if status == 0 else "failed", "build_seconds": build_s, "cuda_tests": tests,
          "selfcheck": (out / "selfcheck.txt").read_text(), "sweeps": sweeps}
(out / "gpu_check.json").write_text(json.dumps(result, indent=1))
print(json.dumps({k: result[k] for k in ("status", "build_seconds", "cuda_tests")}))
PY
exit $status
