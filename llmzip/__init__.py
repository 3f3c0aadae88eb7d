"""llmzip: lossless compression with a causal language model and a range coder.

Importing llmzip changes nothing in the host process; `tune_process()` applies the settings the
command line runs with (OpenMP spinning, malloc thresholds), before torch is imported."""

import importlib

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
from .process import tune_process

# The coder and model loading import torch and transformers (about 7 s): loaded on first use,
# so that `llmzip --help`, `info`, `models` and errors in the options answer at once.
_LAZY = {
    **dict.fromkeys(("CodingStats", "Compressor", "MachineBoundWarning", "compress", "decompress"), "compressor"),
    **dict.fromkeys(("LoadedModel", "load_model"), "models"),
    "Options": "options",
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
    "Options",
    "TruncatedArchiveError",
    "UnsupportedVersionError",
    "WrongModelError",
    "compress",
    "decompress",
    "load_model",
    "tune_process",
]
