"""How to compress and decompress: one frozen set of options that the Python API and the command
line share, checked when it is made (what depends on the model is checked by the Compressor)."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import container
from .chunking import DEFAULT_BATCH_SIZE
from .errors import InvalidOptionError
from .levels import BEST, DEFAULT_LEVEL, FASTEST, LEVELS
from .steering import hyperprior
from .steering.soft_prompt import TrainOptions, parse_spec


@dataclass(frozen=True)
class Options:
    """Every option of `llmzip compress` (decompression reads batch_size, threads and device)."""

    level: int = DEFAULT_LEVEL  # levels.LEVELS: chunk size, window, side models, learning
    chunk_size: int | None = None  # tokens per chunk; None: the level's
    window: int | None = None  # tokens each token attends besides the first (exact predictor); None: the level's
    side_models: bool | None = None  # None: the level's
    learn: bool | None = None  # the weights learn as they code (exact Llama models); None: the level's, where it can
    precision: str | None = None  # container.PRECISIONS; None: exact where llmzip has the architecture
    batch_size: int = DEFAULT_BATCH_SIZE  # most chunks coded together
    threads: int | None = None  # torch threads (per worker on Ray); None: torch's
    device: str = "auto"  # where the exact predictor runs: auto (CUDA if present), cpu, cuda, cuda:N
    steer: str = "none"  # none, text:STRING, random:N, trained:N or auto (steering/soft_prompt.py)
    prior: str = "gaussian"  # how trained steering vectors are coded (steering/hyperprior.py)
    prior_bins: int = hyperprior.DEFAULT_BINS
    prior_clip: float | None = None
    training: TrainOptions = field(default_factory=TrainOptions)  # fitting trained steering vectors

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise InvalidOptionError(f"level must be between {FASTEST} and {BEST}")
        for name, value, most in (("chunk size", self.chunk_size, container.MAX_CHUNK_TOKENS),
                                  ("window", self.window, container.MAX_CHUNK_TOKENS)):  # fmt: skip
            if value is not None and not 1 <= value <= most:
                raise InvalidOptionError(f"{name} must be between 1 and {most} tokens")
        if not 1 <= self.batch_size <= container.MAX_ROWS:
            raise InvalidOptionError(f"batch size must be between 1 and {container.MAX_ROWS}")
        if self.threads is not None and not 1 <= self.threads <= container.MAX_THREADS:
            raise InvalidOptionError(f"threads must be between 1 and {container.MAX_THREADS}")
        if self.precision is not None and self.precision not in container.PRECISIONS:
            raise InvalidOptionError(f"precision must be one of {', '.join(container.PRECISIONS)}")
        parse_spec(self.steer)
        hyperprior.check_options(self.prior, self.prior_bins, self.prior_clip)
