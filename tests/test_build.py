"""Build facts and build guards."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

import glm52_ext

ROOT = Path(__file__).resolve().parents[1]


def test_build_info_reports_the_build():
    info = glm52_ext.build_info()
    assert info["torch_version"] == torch.__version__
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert info["version"] == version
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout: the commit the extension was built from (maybe an older one)
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", info["git_commit"]), info["git_commit"]
    else:
        assert info["git_commit"] is None or info["git_commit"]
    if info["cuda"]:
        assert info["cuda_version"].split(".")[0] == torch.version.cuda.split(".")[0]
        assert any(arch.startswith("90a") for arch in info["cuda_archs"])
        assert info["cutlass_version"].count(".") == 2
    else:
        assert info["cuda_archs"] == [] and info["cutlass_version"] is None


def test_setup_reports_the_commit_or_nothing(tmp_path, monkeypatch):
    """setup.py's git_commit(): the checkout's HEAD, GLM52_GIT_COMMIT when set, "" outside git."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("glm52_setup_under_test", ROOT / "setup.py")
    monkeypatch.setattr("setuptools.setup", lambda **kwargs: None)
    setup_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup_module)
    monkeypatch.delenv("GLM52_GIT_COMMIT", raising=False)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if head:
        assert setup_module.git_commit().startswith(head)
    monkeypatch.setattr(setup_module, "ROOT", tmp_path)  # not a git checkout
    assert setup_module.git_commit() == ""
    monkeypatch.setenv("GLM52_GIT_COMMIT", "abc123")
    assert setup_module.git_commit() == "abc123"


def run_launcher(stderr_text: str, exit_code: int) -> subprocess.CompletedProcess:
    """Run cmake/cuda_launcher.sh around a fake compiler printing `stderr_text`."""
    fake = f"import sys; sys.stderr.write({stderr_text!r}); sys.exit({exit_code})"
    return subprocess.run(
        ["bash", str(ROOT / "cmake" / "cuda_launcher.sh"), sys.executable, "-c", fake], capture_output=True, text=True
    )


def test_cuda_launcher_turns_c7510_into_an_error():
    warning = "ptxas warning : (C7510) Potential Performance Loss: wgmma.mma_async instructions are serialized\n"
    result = run_launcher(warning, 0)
    assert result.returncode != 0
    assert "C7510" in result.stderr and "treated as an error" in result.stderr


def test_cuda_launcher_passes_clean_compiles_and_failures_through():
    assert run_launcher("ptxas info : Used 40 registers\n", 0).returncode == 0
    failed = run_launcher("error: something\n", 3)
    assert failed.returncode == 3 and "error: something" in failed.stderr
