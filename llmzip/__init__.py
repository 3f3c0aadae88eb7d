"""llmzip: lossless compression with a causal language model and a range coder."""

import ctypes
import importlib
import os
import sys

# How long an idle OpenMP thread spins before it sleeps (GNU OpenMP, torch's runtime). A model
# step is hundreds of small kernels, and waking a sleeping thread for each one cost 40% of the
# speed (OMP_WAIT_POLICY=PASSIVE: 79 ms a step against 51 ms); libgomp's default of 300000
# spins made two llmzip processes sharing 2 cores crawl (650 ms a step). 10000 keeps the full
# speed alone and 156 ms shared. Users may still set either variable.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from .aliases import DEFAULT_MODEL
from .errors import (
    CorruptArchiveError,
    DecodeMismatchError,
    InvalidOptionError,
    LlmzipError,
    ModelLoadError,
    TruncatedArchiveError,
    UnsupportedVersionError,
    WrongModelError,
)


def _keep_freed_memory() -> None:
    """glibc gives freed blocks back to the kernel (mmap'd ones over 128 KB at once, the heap's
    top past 128 KB), so every forward faulted its scores and activations in again: a
    teacher-forced forward's attention took 18 ms a layer instead of 8 on the AMD EPYC. Keep
    blocks up to 32 MB on the heap and up to 1 GB of free heap."""
    if sys.platform == "linux":
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:  # musl and others: their own allocators
            return
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


_keep_freed_memory()

# The coder and model loading import torch and transformers (about 7 s): loaded on first use,
# so that `llmzip --help`, `info`, `models` and errors in the options answer at once.
_LAZY = {
    **dict.fromkeys(("CodingStats", "Compressor", "MachineBoundWarning", "compress", "decompress"), "compressor"),
    **dict.fromkeys(("LoadedModel", "load_model"), "models"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.5.0"
__all__ = [
    "DEFAULT_MODEL",
    "CodingStats",
    "Compressor",
    "CorruptArchiveError",
    "DecodeMismatchError",
    "InvalidOptionError",
    "LlmzipError",
    "LoadedModel",
    "MachineBoundWarning",
    "ModelLoadError",
    "TruncatedArchiveError",
    "UnsupportedVersionError",
    "WrongModelError",
    "compress",
    "decompress",
    "load_model",
]
