"""One batch of chunks at a time: what codes a batch (its plan), a loaded model ready to code
batch after batch (`BatchCoder`), and batches coded one after another in this process
(`LocalBatches`). Ray's workers (cluster.py) are the other way to run them, each with a
BatchCoder of its own; a batch codes to the same bytes wherever it runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .coding import Progress, carry_flags, decode_batch, encode_batch
from .container import EXACT, MIN_ROWS, ChunkEntry
from .errors import InvalidOptionError
from .exact.architectures import ExactModel
from .exact.learning import Learner
from .models import LoadedModel, exact_model
from .predictor import ExactPredictor
from .steering.soft_prompt import Steering

if TYPE_CHECKING:
    from .float_predictor import FloatPredictor

    Predictor = ExactPredictor | FloatPredictor

ByteProgress = Callable[[int], None]  # called with a count of input bytes just processed
Job = tuple[list[bytes], list[ChunkEntry]]  # a batch to decode: stored payloads and their entries


@dataclass(frozen=True)
class Plan:
    """What codes every batch of an archive besides the batch's tokens: the same wherever a
    batch is coded."""

    precision: str
    forward: str  # the implementation computing the probabilities (forward_name; an archive's step)
    rows: int  # chunks per batch
    steering: bytes  # Steering.to_bytes()
    window: int | None
    side_models: int  # versions.SIDE_MODELS coded with; 0: none
    learning: int  # versions.LEARNING the weights learn by as they code; 0: they do not


@dataclass
class CodedBatch:
    payloads: list[bytes | None]  # per chunk; None: stored raw
    ideal_bits: float  # sum of -log2 p over the coded tokens and flags


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def resolve_device(device: str) -> torch.device:
    """`auto`: CUDA where torch sees a GPU, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
        torch.empty(0, device=resolved)
    except (RuntimeError, AssertionError) as e:
        raise InvalidOptionError(f"device {device!r} is not usable here: {str(e).splitlines()[0]}") from e
    return resolved


class BatchCoder:
    """A loaded model that codes batches: the exact model is prepared once, and the learner and
    the last plan's predictor are kept for the next batch."""

    def __init__(self, model: LoadedModel, device: str = "auto") -> None:
        self.model, self.device = model, resolve_device(device)
        self._plan_predictor: tuple[Plan, Predictor] | None = None
        self._learner: Learner | None = None

    def prepare(self) -> ExactModel:
        """The exact model, prepared now rather than on the first batch."""
        return exact_model(self.model, self.device)  # prepared once per model and device

    def predictor(self, plan: Plan) -> Predictor:
        """The plan's predictor: exact (any rows), or float (exactly the plan's rows, no window)."""
        if self._plan_predictor is not None and self._plan_predictor[0] == plan:
            return self._plan_predictor[1]
        steer = Steering.from_bytes(plan.steering)
        prefix = steer.prefix(self.model.tokenizer, self.model.facts.width)
        rows, alphabet_size = max(plan.rows, MIN_ROWS), self.model.tokenizer.alphabet_size
        if plan.precision != EXACT:
            from .float_predictor import FloatPredictor  # imports transformers' model code

            predictor: Predictor = FloatPredictor(self.model.model, rows, alphabet_size, plan.precision, prefix)
        else:
            model = self.prepare()
            learner = self._learner_of(model) if plan.learning else None
            model = model if learner is None else learner.model
            predictor = ExactPredictor(model, alphabet_size, prefix, plan.window, plan.forward, learner)
        self._plan_predictor = plan, predictor
        return predictor

    def _learner_of(self, model: ExactModel) -> Learner:
        """The learner (kept: its maps hold the checkpoint's weights in float64, a second to make)."""
        if self._learner is None:
            self._learner = Learner(model, model.projection_maps(self.model.model, model.config))
        return self._learner

    def encode(self, plan: Plan, batch: list[np.ndarray], on_symbols: Progress | None = None) -> CodedBatch:
        """Code one batch of chunks. A chunk is stored raw (None) when coding does not shrink it.

        A raw chunk's row is idle in the decoder, which does not know its tokens; where rows
        affect each other (a float predictor, side models) the batch is coded again without it
        (rare: only data the model cannot predict), the side models from the start. A chunk is
        raw when its tokens' code is not smaller: the batch's flags are the batch's."""
        predictor, tokenizer = self.predictor(plan), self.model.tokenizer
        sizes = [int(tokenizer.id_nbytes[c].sum()) for c in batch]  # each chunk's original bytes
        raw = [False] * len(batch)
        while True:
            rows = [np.empty(0, np.int64) if r else c for c, r in zip(batch, raw, strict=True)]
            coded, flags, ideal_bits = encode_batch(predictor, rows, tokenizer.roles, on_symbols, plan.side_models)
            on_symbols = None  # progress counts each byte once
            grown = [i for i, p in enumerate(coded) if not raw[i] and len(p) >= sizes[i]]
            for i in grown:
                raw[i] = True
            if not grown or (predictor.exact and not plan.side_models) or all(raw):
                break
        if plan.side_models:
            coded = carry_flags(coded, flags, [0 if r else len(c) for c, r in zip(batch, raw, strict=True)])
        return CodedBatch([None if r else p for p, r in zip(coded, raw, strict=True)], 0.0 if all(raw) else ideal_bits)

    def decode(
        self, plan: Plan, stored: list[bytes], entries: list[ChunkEntry], on_symbols: Progress | None = None
    ) -> list[bytes]:
        """One batch's chunks as they decode (raw ones as stored), not yet checked against their CRCs."""
        predictor, tokenizer = self.predictor(plan), self.model.tokenizer
        coded = [b"" if e.raw else p for e, p in zip(entries, stored, strict=True)]
        lengths = [e.tokens for e in entries]
        tokens = decode_batch(predictor, coded, lengths, tokenizer.roles, on_symbols, plan.side_models)
        return [p if e.raw else tokenizer.decode(t) for e, p, t in zip(entries, stored, tokens, strict=True)]

    def symbol_progress(self, progress: ByteProgress | None) -> Progress | None:
        """Report coded symbols to a byte-counting progress callback."""
        if progress is None:
            return None
        id_nbytes = self.model.tokenizer.id_nbytes
        return lambda symbols: progress(int(id_nbytes[symbols].sum()))


class LocalBatches:
    """Batches coded one after another in this process, on `threads` torch threads."""

    def __init__(self, coder: BatchCoder, threads: int) -> None:
        self.coder, self.threads = coder, threads

    def encode(
        self, plan: Plan, batches: Iterable[list[np.ndarray]], progress: ByteProgress | None
    ) -> Iterator[CodedBatch]:
        """Each batch's code, in order."""
        on_symbols = self.coder.symbol_progress(progress)
        with torch_threads(self.threads):
            for batch in batches:
                yield self.coder.encode(plan, batch, on_symbols)

    def decode(self, plan: Plan, jobs: Iterable[Job], progress: ByteProgress | None) -> Iterator[list[bytes]]:
        """Each batch's decoded chunks (stored payloads and entries in), in order."""
        on_symbols = self.coder.symbol_progress(progress)
        with torch_threads(self.threads):
            for stored, entries in jobs:
                yield self.coder.decode(plan, stored, entries, on_symbols)
