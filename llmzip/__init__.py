"""llmzip: lossless compression with a causal language model and a range coder."""

import os

# How long an idle OpenMP thread spins before it sleeps (GNU OpenMP, torch's runtime). A model
# step is hundreds of small kernels, and waking a sleeping thread for each one cost 40% of the
# speed (OMP_WAIT_POLICY=PASSIVE: 79 ms a step against 51 ms); libgomp's default of 300000
# spins made two llmzip processes sharing 2 cores crawl (650 ms a step). 10000 keeps the full
# speed alone and 156 ms shared. Users may still set either variable.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from .compressor import CodingStats, Compressor, MachineBoundWarning, compress, decompress
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

__version__ = "0.2.0"
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
