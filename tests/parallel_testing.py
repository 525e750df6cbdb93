"""Run a function on several CPU ranks (gloo) the way torchrun would, with a hard deadline."""

from __future__ import annotations

import os
import socket
import time
import traceback
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(rank: int, world: int, port: int) -> dict[str, str]:
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}


def _entry(rank: int, world: int, port: int, out: str, fn, args) -> None:
    os.environ.update(torchrun_env(rank, world, port))
    torch.set_num_threads(1)
    try:
        result = fn(rank, *args)
        torch.save({"ok": result}, f"{out}/{rank}.pt")
    except BaseException as e:  # report, do not hang: the parent reads every rank's file
        torch.save({"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}, f"{out}/{rank}.pt")
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(world: int, fn, *args, out: Path, timeout: float = 240.0) -> list[dict]:
    """``fn(rank, *args)`` on ``world`` processes; -> each rank's ``{"ok": result}`` or
    ``{"error": message}``. A rank still running after ``timeout`` seconds fails the test (a hang)."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = mp.start_processes(_entry, args=(world, free_port(), str(out), fn, args), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError(f"ranks still running after {timeout:.0f} s: a collective hangs")
    return [torch.load(out / f"{r}.pt", weights_only=False) for r in range(world)]


def results(reports: list[dict]) -> list:
    errors = [f"rank {r}: {rep['error']}\n{rep['trace']}" for r, rep in enumerate(reports) if "error" in rep]
    assert not errors, "\n".join(errors)
    return [rep["ok"] for rep in reports]
