"""``torchrun -m glm52 generate --tp/--dp/--ep`` on CPU ranks (gloo): rank 0 prints what one
process prints (greedy tokens equal, plain and speculative); a bad layout fails on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from parallel_testing import free_port

from glm52 import GLM52Config, GLM52ForCausalLM
from glm52.checkpoint import init_random_, save_checkpoint
from glm52.cli import main

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["--prompt-ids", "5,9,200,31,7,8,9,10,11,12,13", "--prompt-ids", "7", "--prompt-ids", "40,41,42"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = GLM52Config.preset("tiny").replace(num_hidden_layers=4, first_k_dense_replace=1, index_topk=8)
    return save_checkpoint(init_random_(GLM52ForCausalLM(config), seed=3), tmp_path_factory.mktemp("cli") / "ckpt")


def torchrun(nproc: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "python"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
           str(free_port()), "-m", "glm52", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def generate_args(checkpoint, spec_steps: int) -> list[str]:
    return ["generate", "--checkpoint", str(checkpoint), *PROMPTS, "--max-new-tokens", "8", "--temperature", "0",
            "--dtype", "float32", "--spec-steps", str(spec_steps), "--json"]


@pytest.mark.parametrize("nproc, layout, spec_steps", [
    (2, ["--tp", "2", "--ep", "2"], 0),
    (4, ["--tp", "2", "--dp", "2", "--ep", "4"], 3),
])
def test_torchrun_generate_equals_one_process(checkpoint, capsys, nproc, layout, spec_steps):
    assert main(generate_args(checkpoint, spec_steps)) == 0
    want = json.loads(capsys.readouterr().out)
    run = torchrun(nproc, *generate_args(checkpoint, spec_steps), *layout)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1, f"only rank 0 prints: {run.stdout}"
    got = json.loads(lines[0])
    assert got["tokens"] == want["tokens"]
    assert got.keys() == want.keys() and got["prompt_ids"] == want["prompt_ids"]


def test_torchrun_wrong_world_size_fails_without_a_hang(checkpoint):
    """Each rank refuses the layout before any collective (tests/test_parallel.py checks that per
    rank); under torchrun the job ends with the error instead of hanging. How many ranks print it
    depends on a race: torchrun stops the other workers once the first one fails."""
    run = torchrun(2, *generate_args(checkpoint, 0), "--tp", "4", timeout=120)
    assert run.returncode != 0
    assert run.stderr.count("tp (4) x dp (1) = 4 must equal the world size (2") >= 1, run.stderr[-3000:]
    assert run.stdout == ""


def test_plan_dp_matches_the_layout(capsys):
    assert main(["plan", "--tp", "8", "--dp", "2", "--ep", "16", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert (p["tp"], p["dp"], p["ep"], p["gpus"]) == (8, 2, 16, 16)
    assert main(["plan", "--tp", "8", "--dp", "2", "--ep", "3"]) == 2
    assert "ep (3) must be 1 or a multiple of tp (8)" in capsys.readouterr().err
