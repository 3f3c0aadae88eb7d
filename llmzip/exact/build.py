"""Compiling and loading the fused CPU kernels (csrc/): built once by torch's cpp_extension into
llmzip's cache, one build per source, flags, torch version and instruction set, and afterwards
imported from there without running ninja or a compiler again."""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import platform
import re
import threading
import time
from pathlib import Path
from types import ModuleType

import torch

from .. import notices
from ..aliases import cache_dir

CSRC = Path(__file__).with_name("csrc")
NAME = "llmzip_kernels"
CFLAGS = (
    "-fopenmp",  # at::parallel_for is OpenMP in torch's headers: without it, one thread
    "-O3",
    "-march=native",
    "-ffp-contract=off",
    "-fno-trapping-math",
)
BUILT = "built"  # written into the build directory once its library loaded: the build is complete
# The flags that name instruction sets -march=native may use (the rest of /proc/cpuinfo's flags
# line differs between hosts of one CPU kind, e.g. mitigations, and must not force a rebuild).
_ISA_FLAG = re.compile(
    r"(sse|ssse|avx|amx|fma|f16c|bmi|popcnt|abm|lzcnt|movbe|aes|pclmul|sha|vaes|vpclmul|gfni|adx|xsave"
    r"|rdrand|rdseed|rdpid|clflush|clwb|cx16|prfchw|mmx|vnni|movdir|serialize)"
)
TORCH_PATH_SLOWDOWN = "3 to 6 times"  # the torch reference path against the kernels (docs/performance.md)


def sources() -> list[Path]:
    return sorted(CSRC.glob("*.cpp"))


def instruction_sets() -> str:
    """This CPU's instruction-set flags (x86 Linux), else what the platform says of the CPU."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith(("flags", "Features"))), "")
        return " ".join(sorted(f for f in flags.split(":")[-1].split() if _ISA_FLAG.match(f))) or flags
    return f"{platform.machine()} {platform.processor()}"


def build_directory(defines: dict[str, str]) -> Path:
    """Where the kernels are built: one directory per source, flags, torch version and instruction
    set, so that two llmzip versions do not rebuild over each other, and `-march=native` code built
    on another CPU (a home directory shared by a cluster's nodes) is never loaded here."""
    build = hashlib.sha256()
    for path in sorted(CSRC.iterdir()):
        build.update(path.name.encode() + b"\0" + path.read_bytes())
    for part in (*CFLAGS, *(f"-D{k}={v}" for k, v in sorted(defines.items())), instruction_sets()):
        build.update(part.encode() + b"\0")
    return cache_dir() / "kernels" / f"torch-{torch.__version__}-{build.hexdigest()[:16]}"


def load(defines: dict[str, str]) -> ModuleType | None:
    """The kernels compiled with `defines` (macros the sources need): imported if built, else
    built first (a minute or two, said so); None where LLMZIP_KERNELS=0 or they cannot be built
    (no compiler, no ninja: said once, with the cost)."""
    if os.environ.get("LLMZIP_KERNELS") == "0":
        return None
    build = build_directory(defines)
    if (build / BUILT).exists():
        try:
            return _import(build)
        except (ImportError, OSError):  # removed or damaged since: built again
            (build / BUILT).unlink(missing_ok=True)
    try:
        build.mkdir(parents=True, exist_ok=True)
        with open(build / "llmzip.lock", "w") as lock:
            # torch's own lock is a file that a build killed midway leaves behind, and every later
            # load then waits on it forever; an flock dies with its process. Under it, torch's
            # lock file can only be such a leftover.
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (build / BUILT).exists():  # else another process built them while this one waited
                (build / "lock").unlink(missing_ok=True)
                _compile(build, defines)
            return _import(build)
    except Exception as e:  # a missing compiler or ninja shows up as many exception types
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        notices.warn(
            f"cannot build the exact kernels ({reason[:200]}); coding runs on the torch reference path, "
            f"{TORCH_PATH_SLOWDOWN} slower, with the same results (install a C++ compiler and ninja to build them)"
        )
        return None


def _compile(build: Path, defines: dict[str, str]) -> None:
    """Compile the sources into `build` (ninja, one unit per source), with a bar of the units done."""
    from torch.utils import cpp_extension

    units = sources()
    notices.say(f"building the exact kernels for this CPU into {build} (once; 1-2 minutes on 2 cores)")
    started, done = time.time(), threading.Event()
    with notices.bar(len(units), "build kernels", unit="file") as progress:

        def count_objects() -> None:
            while not done.wait(0.5):
                progress.update(sum(o.stat().st_mtime >= started for o in build.glob("*.o")) - progress.n)

        watcher = threading.Thread(target=count_objects, daemon=True)
        watcher.start()
        try:
            cpp_extension.load(
                name=NAME,
                sources=[str(path) for path in units],
                extra_cflags=[*CFLAGS, *(f"-D{k}={v}" for k, v in defines.items())],
                extra_ldflags=["-fopenmp"],  # torch's own libgomp, already loaded under that name
                build_directory=str(build),
            )
        finally:
            done.set()
            watcher.join()
        progress.update(len(units) - progress.n)
    (build / BUILT).write_text(f"{time.time() - started:.1f} s\n")


def _import(build: Path) -> ModuleType:
    """The built library as a module (cpp_extension.load would run ninja again, which rebuilds
    whenever another ninja or compiler comes first on PATH)."""
    spec = importlib.util.spec_from_file_location(NAME, build / f"{NAME}.so")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
