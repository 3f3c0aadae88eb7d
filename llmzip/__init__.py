"""llmzip: lossless compression with a causal language model and a range coder."""

import os

# OpenMP threads that spin while waiting ruin throughput on a shared or busy machine
# (measured: a 2-thread step went from 89 ms to 3.3 s); users may still override it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .compressor import CodingStats, Compressor, compress, decompress
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
from .models import DEFAULT_MODEL, LoadedModel, load_model

__version__ = "0.1.0"
__all__ = [
    "DEFAULT_MODEL",
    "CodingStats",
    "Compressor",
    "CorruptArchiveError",
    "DecodeMismatchError",
    "InvalidOptionError",
    "LlmzipError",
    "LoadedModel",
    "ModelLoadError",
    "TruncatedArchiveError",
    "UnsupportedVersionError",
    "WrongModelError",
    "compress",
    "decompress",
    "load_model",
]
