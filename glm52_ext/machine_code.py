"""Inspect the CUDA machine code inside the built extension (no GPU needed).

Uses ``cuobjdump`` from the CUDA toolkit or from the ``triton`` wheel. Kernel engineers can run
``python -m glm52_ext.machine_code`` to list every kernel with its registers, local memory and
tensor-core instruction counts; the tests assert on the same data.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

TENSOR_CORE_OPS = ("QGMMA", "HGMMA", "HMMA", "IMMA")


def find_cuobjdump() -> str | None:
    """cuobjdump on PATH or in the toolkit, else the copy the triton wheel ships."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    for candidate in (Path("/usr/local/cuda/bin/cuobjdump"),):
        if candidate.exists():
            return str(candidate)
    try:
        import triton
    except ImportError:
        return None
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.exists() else None


def extension_path() -> Path:
    from . import _C

    return Path(_C.__file__)


def _cuobjdump(*args: str) -> str:
    tool = find_cuobjdump()
    if tool is None:
        raise FileNotFoundError("cuobjdump not found: install the CUDA toolkit or the triton wheel")
    return subprocess.run([tool, *args, str(extension_path())], capture_output=True, text=True, check=True).stdout


@dataclass
class Kernel:
    name: str  # mangled
    arch: str = ""
    registers: int = 0
    local_bytes: int = 0
    stack_bytes: int = 0
    tensor_core_ops: dict[str, int] = field(default_factory=dict)


def elf_archs() -> list[str]:
    """Archs of the embedded cubins, e.g. ['sm_90a']."""
    return sorted(set(re.findall(r"\.(sm_\w+)\.cubin", _cuobjdump("--list-elf"))))


def kernels() -> list[Kernel]:
    """Every kernel in the extension with its resource usage and tensor-core instruction counts."""
    found: dict[tuple[str, str], Kernel] = {}
    arch = ""
    current = None
    for line in _cuobjdump("--dump-resource-usage").splitlines():
        if m := re.match(r"\s*arch = (sm_\w+)", line):
            arch = m.group(1)
        elif m := re.match(r"\s*Function (\S+):", line):
            current = found.setdefault((m.group(1), arch), Kernel(m.group(1), arch))
        elif current is not None and (m := re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", line)):
            current.registers, current.stack_bytes, current.local_bytes = (int(m.group(i)) for i in (1, 2, 3))
    arch = ""
    current = None
    for line in _cuobjdump("--dump-sass").splitlines():
        if m := re.match(r"\s*arch = (sm_\w+)", line):
            arch = m.group(1)
        elif m := re.match(r"\s*Function : (\S+)", line):
            current = found.get((m.group(1), arch))
        elif current is not None:
            for op in TENSOR_CORE_OPS:
                if re.search(rf"\b{op}\b", line):
                    current.tensor_core_ops[op] = current.tensor_core_ops.get(op, 0) + 1
    return list(found.values())


def main() -> int:
    from . import build_info

    info = build_info()
    if not info["cuda"]:
        print("glm52_ext was built without CUDA kernels: no machine code to show", file=sys.stderr)
        return 1
    print(f"{extension_path()}  archs {elf_archs()}")
    print(f"{'arch':<8} {'regs':>5} {'local':>6} {'stack':>6}  {'tensor-core ops':<16} kernel")
    found = sorted(kernels(), key=lambda k: k.name)
    names = [k.name for k in found]
    if shutil.which("c++filt"):
        names = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
    for k, name in zip(found, names):
        ops = " ".join(f"{op}x{n}" for op, n in sorted(k.tensor_core_ops.items())) or "-"
        print(f"{k.arch:<8} {k.registers:>5} {k.local_bytes:>6} {k.stack_bytes:>6}  {ops:<16} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
