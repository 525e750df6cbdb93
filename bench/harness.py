"""Benchmark harness shared by every sweep in bench/.

Timing follows DESIGN §5: CUDA events, warm-up, the median of many runs, inputs rotated through a
pool larger than L2 so no run is served from cache, never zeros. Each sweep reports time, GB/s or
TFLOPS, the fraction of a ceiling measured in the same run, and its baseline; results go to stdout
as a table and to ``<out>/<name>.json`` and ``.csv``. On a machine without a GPU the same sweeps
run on the CPU (``--device cpu``) with wall-clock timing, to keep them from rotting; those numbers
say nothing about the kernels' speed.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

L2_BYTES = {"H200": 60 << 20, "H100": 50 << 20}
DEFAULT_L2_BYTES = 64 << 20


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("bench/out"), help="directory for JSON/CSV")
    parser.add_argument("--quick", action="store_true", help="a few small shapes (smoke test)")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    return parser.parse_args(argv)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def l2_bytes(device: str) -> int:
    if device != "cuda":
        return DEFAULT_L2_BYTES
    name = torch.cuda.get_device_name()
    return next((size for key, size in L2_BYTES.items() if key in name), DEFAULT_L2_BYTES)


def rotation_count(bytes_per_call: int, device: str) -> int:
    """How many input sets make a pool at least twice the size of L2."""
    return max(1, min(64, -(-2 * l2_bytes(device) // max(bytes_per_call, 1))))


def time_ms(fn: Callable[[int], object], device: str, iters: int, warmup: int, pool: int) -> float:
    """Median milliseconds of fn(i % pool): fn(i) runs the op on the i-th input set."""
    for i in range(warmup):
        fn(i % pool)
    if device == "cuda":
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for i in range(iters):
            starts[i].record()
            fn(i % pool)
            ends[i].record()
        torch.cuda.synchronize()
        samples = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        samples = []
        for i in range(iters):
            begin = time.perf_counter()
            fn(i % pool)
            samples.append(1e3 * (time.perf_counter() - begin))
    return statistics.median(samples)


def copy_bandwidth_gbs(device: str, nbytes: int = 1 << 30, iters: int = 20) -> float:
    """The bandwidth ceiling measured now: a device-to-device copy, read + write bytes counted."""
    if device != "cuda":
        nbytes = 1 << 27
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda _: dst.copy_(src), device, iters, 3, 1)
    return 2 * nbytes / ms / 1e6


def fp8_peak_tflops(device: str, size: int = 8192, iters: int = 20) -> float | None:
    """The FP8 compute ceiling measured now: a large torch._scaled_mm (None without a GPU)."""
    if device != "cuda":
        return None
    a = torch.randn(size, size, device=device).to(torch.float8_e4m3fn)
    b = torch.randn(size, size, device=device).to(torch.float8_e4m3fn).t()
    one = torch.ones((), device=device)
    ms = time_ms(lambda _: torch._scaled_mm(a, b, one, one, out_dtype=torch.bfloat16), device, iters, 5, 1)
    return 2 * size**3 / ms / 1e9


def environment(device: str) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    import glm52_ext

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit or "unknown",
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "build": glm52_ext.build_info(),
    }


def report(name: str, rows: list[dict], meta: dict, out_dir: Path) -> None:
    """Print rows as a table (stdout) and write <out_dir>/<name>.json and .csv; a row may lack
    some columns (left blank)."""
    if not rows:
        progress(f"{name}: no rows")
        return
    columns = list(dict.fromkeys(c for r in rows for c in r))  # every row's columns, first seen first
    widths = {c: max(len(c), *(len(_fmt(r.get(c, ""))) for r in rows)) for c in columns}
    print(f"\n== {name} on {meta['device']} (commit {meta['commit']}) ==")
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c, "")).rjust(widths[c]) for c in columns))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps({"name": name, **meta, "rows": rows}, indent=1))
    with open(out_dir / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    progress(f"{name}: wrote {out_dir / name}.json and .csv")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
