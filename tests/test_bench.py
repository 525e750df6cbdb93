"""The benchmark sweeps still run (tiny shapes, CPU): they must not rot between GPU loans."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "bench").glob("bench_*.py"))


@pytest.mark.parametrize("sweep", SWEEPS, ids=[s.stem for s in SWEEPS])
def test_sweep_runs_and_writes_results(sweep, tmp_path):
    cmd = [sys.executable, str(sweep), "--device", "cpu", "--quick", "--iters", "2", "--warmup", "1", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    written = list(tmp_path.glob("*.json"))
    assert written and all(p.with_suffix(".csv").exists() for p in written)
    for path in written:
        data = json.loads(path.read_text())
        assert data["rows"] and {"date", "commit", "device"} <= set(data)
        for row in data["rows"]:
            assert row["time_us"] > 0 and "baseline" in row and any(k.startswith("frac_of_") for k in row)
