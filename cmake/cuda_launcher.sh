#!/usr/bin/env bash
# CUDA compiler launcher: cuda_launcher.sh [ccache] nvcc ARGS...
# Runs the compile (through ccache when given) and fails it if ptxas reported C7510: "wgmma
# instructions are serialized" silently costs a Hopper GEMM most of its speed. ccache replays the
# compiler's stderr on a hit, so a cached object is checked too.
set -u
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$@" 2>"$log"
rc=$?
cat "$log" >&2
if [ "$rc" -eq 0 ] && grep -q "C7510" "$log"; then
  echo "error: ptxas warning C7510 (wgmma serialized) is treated as an error; is -DNDEBUG missing?" >&2
  exit 1
fi
exit "$rc"
