"""Compiling and loading the fused CPU kernels (csrc/): built by torch's cpp_extension on first
use into llmzip's cache, one build per source, flags, torch version and CPU, and loaded from there
afterwards."""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path
from types import ModuleType

import torch

from ..aliases import cache_dir

CSRC = Path(__file__).with_name("csrc")
CFLAGS = (
    "-fopenmp",  # at::parallel_for is OpenMP in torch's headers: without it, one thread
    "-O3",
    "-march=native",
    "-ffp-contract=off",
    "-fno-trapping-math",
)


def sources() -> list[Path]:
    return sorted(CSRC.glob("*.cpp"))


def build_directory(defines: dict[str, str]) -> Path:
    """Where the kernels are built: one directory per source, flags, torch version and CPU, so
    that two llmzip versions do not rebuild over each other, and `-march=native` code built on
    another CPU (a home directory shared by a cluster's nodes) is never loaded here."""
    cpuinfo = Path("/proc/cpuinfo")
    cpu = cpuinfo.read_text() if cpuinfo.exists() else platform.processor()
    cpu = next((line for line in cpu.splitlines() if line.startswith("flags")), cpu)
    build = hashlib.sha256()
    for path in sorted(CSRC.iterdir()):
        build.update(path.name.encode() + b"\0" + path.read_bytes())
    for part in (*CFLAGS, *(f"-D{k}={v}" for k, v in sorted(defines.items())), cpu):
        build.update(part.encode() + b"\0")
    return cache_dir() / "kernels" / f"torch-{torch.__version__}-{build.hexdigest()[:16]}"


def load(defines: dict[str, str]) -> ModuleType | None:
    """The kernels compiled with `defines` (macros the sources need), or None where they cannot
    be built (no compiler, no ninja) or LLMZIP_KERNELS=0."""
    if os.environ.get("LLMZIP_KERNELS") == "0":
        return None
    try:
        import fcntl

        from torch.utils import cpp_extension

        build = build_directory(defines)
        build.mkdir(parents=True, exist_ok=True)
        with open(build / "llmzip.lock", "w") as lock:
            # torch's own lock is a file that a build killed midway leaves behind, and every later
            # load then waits on it forever; an flock dies with its process. Under it, torch's
            # lock file can only be such a leftover.
            fcntl.flock(lock, fcntl.LOCK_EX)
            (build / "lock").unlink(missing_ok=True)
            return cpp_extension.load(
                name="llmzip_kernels",
                sources=[str(path) for path in sources()],
                extra_cflags=[*CFLAGS, *(f"-D{k}={v}" for k, v in defines.items())],
                extra_ldflags=["-fopenmp"],  # torch's own libgomp, already loaded under that name
                build_directory=str(build),
            )
    except Exception:  # a missing compiler or ninja shows up as many exception types
        return None
