"""Build glm52: setuptools drives CMake (Ninja, ccache when present) to build ``glm52_ext._C``.

Environment knobs (all optional):

- ``GLM52_CUDA``: ``1`` requires the CUDA kernels (the build fails if they cannot be built),
  ``0`` builds CPU-only, unset builds CUDA when a matching toolkit is found and otherwise falls
  back to CPU-only with one warning.
- ``TORCH_CUDA_ARCH_LIST``: e.g. ``9.0a`` (default with no visible GPU) or ``8.0;9.0a``.
- ``CUDA_HOME`` / ``CUDA_PATH``: the toolkit; otherwise found from ``nvcc`` on PATH.
- ``CUTLASS_DIR``: a CUTLASS checkout or include dir; otherwise the ``nvidia-cutlass`` wheel.
- ``MAX_JOBS``: parallel compile jobs (default: CPU count).
- ``GLM52_BUILD_DIR``: CMake build tree (default ``build/cmake-<python>-<cpu|cuda>``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def warn(message: str) -> None:
    print(f"glm52 build: WARNING: {message}", file=sys.stderr)


class CudaUnavailable(Exception):
    """Why the CUDA kernels cannot be built with this environment."""


def find_toolkit_root() -> Path:
    """The real toolkit root, even when ``nvcc`` on PATH is a wrapper script outside it."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var) and (Path(os.environ[var]) / "bin" / "nvcc").exists():
            return Path(os.environ[var]).resolve()
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not Path(nvcc).exists():
        raise CudaUnavailable("no nvcc found (set CUDA_HOME or put nvcc on PATH)")
    # `nvcc --dryrun` names the directory the real driver runs from (_HERE_), whatever wraps it.
    dry = subprocess.run([nvcc, "--dryrun", "-c", "x.cu"], capture_output=True, text=True)
    here = re.search(r"^#\$ _HERE_=(.+)$", dry.stderr + dry.stdout, re.M)
    root = Path(here.group(1).strip()).parent if here else Path(nvcc).resolve().parent.parent
    if not (root / "include" / "cuda_runtime.h").exists():
        raise CudaUnavailable(f"nvcc at {nvcc} resolves to {root}, which has no include/cuda_runtime.h")
    return root


def nvcc_version(root: Path) -> str:
    out = subprocess.run([str(root / "bin" / "nvcc"), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"release (\d+\.\d+)", out)
    if not match:
        raise CudaUnavailable(f"cannot read the version of {root / 'bin' / 'nvcc'}")
    return match.group(1)


def cuda_architectures() -> str:
    """CMake architectures from TORCH_CUDA_ARCH_LIST ('9.0a;8.0+PTX' -> '90a-real;80-real;80-virtual')."""
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if not arch_list:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            arch_list = f"{major}.{minor}" + ("a" if major == 9 else "")
        else:
            arch_list = "9.0a"
    archs = []
    for item in re.split(r"[;\s,]+", arch_list):
        match = re.fullmatch(r"(\d+)\.(\d+)([af]?)(\+PTX)?", item)
        if not match:
            raise ValueError(f"TORCH_CUDA_ARCH_LIST: cannot parse {item!r} (expected e.g. '9.0a' or '8.0+PTX')")
        code = f"{match.group(1)}{match.group(2)}{match.group(3)}"
        archs.append(f"{code}-real")
        if match.group(4):
            archs.append(f"{code}-virtual")
    return ";".join(archs)


def find_cutlass() -> Path:
    """CUTLASS's include dir: CUTLASS_DIR, else the nvidia-cutlass wheel (not imported, only located)."""
    if os.environ.get("CUTLASS_DIR"):
        base = Path(os.environ["CUTLASS_DIR"])
        for candidate in (base / "include", base):
            if (candidate / "cutlass" / "version.h").exists():
                return candidate.resolve()
        raise CudaUnavailable(f"CUTLASS_DIR={base} holds no include/cutlass/version.h")
    spec = importlib.util.find_spec("cutlass_library")
    for location in (spec.submodule_search_locations or []) if spec else []:
        include = Path(location) / "source" / "include"
        if (include / "cutlass" / "version.h").exists():
            return include
    raise CudaUnavailable("CUTLASS not found: pip install nvidia-cutlass, or set CUTLASS_DIR")


def cuda_cmake_args() -> list[str]:
    """CMake arguments for the CUDA kernels; raises CudaUnavailable when they cannot be built."""
    import torch

    if not torch.version.cuda:
        raise CudaUnavailable(f"torch {torch.__version__} is a CPU-only build and cannot link CUDA code")
    root = find_toolkit_root()
    version = nvcc_version(root)
    if version.split(".")[0] != torch.version.cuda.split(".")[0]:
        raise CudaUnavailable(
            f"nvcc {version} at {root} does not match torch's CUDA {torch.version.cuda} (major versions differ)"
        )
    return [
        "-DGLM52_CUDA=ON",
        f"-DCMAKE_CUDA_COMPILER={root / 'bin' / 'nvcc'}",
        f"-DCUDAToolkit_ROOT={root}",
        f"-DCMAKE_CUDA_ARCHITECTURES={cuda_architectures()}",
        f"-DGLM52_CUTLASS_INCLUDE_DIR={find_cutlass()}",
    ]


def git_commit() -> str:
    """The commit the sources come from ("+dirty" when the tree has changes), GLM52_GIT_COMMIT when
    set (e.g. by a packager), or "" when neither is known (an sdist, no git)."""
    if os.environ.get("GLM52_GIT_COMMIT"):
        return os.environ["GLM52_GIT_COMMIT"]
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
    except OSError:  # no git installed
        return ""
    return head.stdout.strip() + ("+dirty" if dirty else "")


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        mode = os.environ.get("GLM52_CUDA", "").strip()
        if mode not in ("", "0", "1"):
            raise SystemExit(f"GLM52_CUDA must be 0, 1 or unset, got {mode!r}")
        cuda_args = ["-DGLM52_CUDA=OFF"]
        if mode != "0":
            try:
                cuda_args = cuda_cmake_args()
            except CudaUnavailable as why:
                if mode == "1":
                    raise SystemExit(f"glm52 build: GLM52_CUDA=1 but the CUDA kernels cannot be built: {why}")
                warn(f"building CPU-only kernels: {why}")
        flavour = "cuda" if "-DGLM52_CUDA=ON" in cuda_args else "cpu"
        build_dir = Path(
            os.environ.get("GLM52_BUILD_DIR") or ROOT / "build" / f"cmake-py{sys.version_info[0]}{sys.version_info[1]}-{flavour}"
        )
        build_dir.mkdir(parents=True, exist_ok=True)
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DGLM52_OUTPUT_DIR={out_dir}",
            f"-DGLM52_EXT_SUFFIX={sysconfig.get_config_var('EXT_SUFFIX')}",
            f"-DGLM52_VERSION={self.distribution.get_version()}",
            f"-DGLM52_GIT_COMMIT={git_commit()}",
            *cuda_args,
        ]
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        print(f"glm52 build: {flavour} kernels, {jobs} jobs, build tree {build_dir}", file=sys.stderr)
        subprocess.run(configure, check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)


setup(
    packages=[*find_packages(include=["glm52_ext", "glm52_ext.*"]), *find_packages(where="python")],
    package_dir={"glm52_ext": "glm52_ext", "glm52": "python/glm52"},
    ext_modules=[CMakeExtension("glm52_ext._C")],
    cmdclass={"build_ext": CMakeBuild},
)
