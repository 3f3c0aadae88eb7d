"""Compress and decompress, top to bottom: bytes -> tokens (spooled) -> chunks -> batches of chunks
coded in lockstep with the model -> payloads (spooled) -> container."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch

from . import container, versions
from .aliases import DEFAULT_MODEL
from .chunking import DEFAULT_BATCH_SIZE, TokenChunks
from .cluster import Cluster, WorkerSpec
from .coding import Progress, carry_flags, decode_batch, encode_batch
from .container import EXACT, MIN_ROWS, PRECISIONS, ArchiveReader, ChunkEntry, Header
from .errors import (
    CorruptArchiveError,
    DecodeMismatchError,
    InvalidOptionError,
    WrongModelError,
)
from .exact.learning import Learner
from .levels import BEST, DEFAULT_LEVEL, FASTEST, LEVELS, MAX_STREAM, Level, chunk_size_for
from .models import LoadedModel, exact_model, load_model
from .predictor import (
    SINK_TOKENS,
    ExactModel,
    ExactPredictor,
    FloatPredictor,
    Predictor,
    can_learn,
    default_precision,
    exact_architecture,
    forward_name,
    has_exact,
)
from .steering import hyperprior, training
from .steering.soft_prompt import Steering, TrainOptions, parse_spec
from .tokenization import ByteTokenizer

ByteProgress = Callable[[int], None]  # called with a count of input bytes just processed


@dataclass
class CodingStats:
    """What the last compress measured (for -v, `info` and benchmarks)."""

    input_bytes: int = 0
    tokens: int = 0
    chunks: int = 0
    chunk_size: int = 0  # tokens per chunk (the last may have fewer)
    window: int | None = None  # the attention window coded with (None: whole chunks)
    side_models: int = 0  # the side models' version coded with (versions.SIDE_MODELS); 0: none
    raw_chunks: int = 0
    payload_bytes: int = 0
    archive_bytes: int = 0
    ideal_bits: float = 0.0  # sum of -log2 p over coded tokens: what a perfect coder would need
    coded_bits: int = 0  # bits the range coder produced for those tokens
    seconds: float = 0.0  # the whole compress, steering training included
    steering: str = "none"  # the variant the archive holds
    steering_bytes: int = 0  # its header payload
    steering_seconds: float = 0.0  # spent training steering vectors (before any coding)
    unsteered_bytes: int | None = None  # archive size without steering, where it was measured (auto)


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


Job = tuple[list[bytes], list[ChunkEntry]]  # a batch to decode: stored payloads and their entries


@dataclass
class CodedBatch:
    payloads: list[bytes | None]  # per chunk; None: stored raw
    ideal_bits: float  # sum of -log2 p over the coded tokens and flags


class MachineBoundWarning(UserWarning):
    """The archive will open only where the encoder's floats can be reproduced."""


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _is_transformers(step: str) -> bool:
    return step.startswith("transformers-")


def _runtime(model: LoadedModel, precision: str) -> tuple[str, str, str]:
    """What besides the archive's geometry decides a float forward: torch, the CPU's kernels, the forward."""
    return torch.__version__, cpu_capability(), forward_name(model.model, precision)


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


def cpu_capability() -> str:
    """torch's kernel level plus the units oneDNN picks bfloat16 kernels by, e.g. `AVX512+bf16+amx`."""
    units = [("bf16", torch.cpu._is_avx512_bf16_supported), ("amx", torch.cpu._is_amx_tile_supported)]
    return "+".join([torch.backends.cpu.get_cpu_capability()] + [name for name, has in units if has()])


class Compressor:
    """Keeps a model loaded between calls; `compress` and `decompress` work on bytes."""

    def __init__(
        self,
        model: str | LoadedModel = DEFAULT_MODEL,
        *,
        level: int = DEFAULT_LEVEL,
        chunk_size: int | None = None,
        window: int | None = None,
        side_models: bool | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        threads: int | None = None,
        precision: str | None = None,
        learn: bool | None = None,
        device: str = "auto",
        steer: str = "none",
        prior: str = "gaussian",
        prior_bins: int = hyperprior.DEFAULT_BINS,
        prior_clip: float | None = None,
        training: TrainOptions | None = None,
        cluster: Cluster | None = None,
        quiet: bool = True,
    ) -> None:
        """`cluster`: code batches on its workers, which load `model` by name (exact predictor only).
        `learn`: the weights learn as they code (learning.py; the exact predictor of a Llama model);
        None: where the level says and the model can."""
        self.model = model if isinstance(model, LoadedModel) else load_model(model, quiet=quiet)
        self.source = model if isinstance(model, str) else None  # what a worker loads
        if level not in LEVELS:
            raise InvalidOptionError(f"level must be between {FASTEST} and {BEST}")
        if chunk_size is not None and not 1 <= chunk_size <= container.MAX_CHUNK_TOKENS:
            raise InvalidOptionError(f"chunk size must be between 1 and {container.MAX_CHUNK_TOKENS} tokens")
        if not 1 <= batch_size <= container.MAX_ROWS:
            raise InvalidOptionError(f"batch size must be between 1 and {container.MAX_ROWS}")
        if threads is not None and not 1 <= threads <= container.MAX_THREADS:
            raise InvalidOptionError(f"threads must be between 1 and {container.MAX_THREADS}")
        if precision is not None and precision not in PRECISIONS:
            raise InvalidOptionError(f"precision must be one of {', '.join(PRECISIONS)}")
        if precision == EXACT and not has_exact(self.model.model):
            raise InvalidOptionError(
                f"model {self.model.name!r} ({self.model.model.config.model_type}) has no exact predictor in llmzip; "
                f"use --precision {default_precision(self.model.model)} (machine-bound archives)"
            )
        if window is not None and not 1 <= window <= container.MAX_CHUNK_TOKENS:
            raise InvalidOptionError(f"window must be between 1 and {container.MAX_CHUNK_TOKENS} tokens")
        self.batch_size = batch_size
        self.threads = threads or torch.get_num_threads()
        self.precision = precision or default_precision(self.model.model)
        for what, asked in (("an attention window needs", window is not None), ("side models need", side_models)):
            if asked and self.precision != EXACT:
                raise InvalidOptionError(f"{what} the exact predictor, not precision {self.precision}")
        self.level, self.chunk_size, self.window = level, *self._geometry(LEVELS[level], chunk_size, window)
        self.chunk_size_given = chunk_size is not None
        self.side_models = (LEVELS[level].side if side_models is None else side_models) and self.precision == EXACT
        learnable = self.precision == EXACT and can_learn(self.model.model)
        if learn and not learnable:
            raise InvalidOptionError("learning needs the exact predictor of a Llama model")
        self.learning = LEVELS[level].learn and learnable if learn is None else learn
        self.device_option, self.device = device, resolve_device(device)
        self.cluster = cluster
        self._exact_model: ExactModel | None = None  # prepared once, on first use
        self._plan_predictor: tuple[Plan, Predictor] | None = None
        self._learner: Learner | None = None  # made once, on first use
        self.steer = parse_spec(steer)
        hyperprior.check_options(prior, prior_bins, prior_clip)
        self.prior, self.prior_bins, self.prior_clip = prior, prior_bins, prior_clip
        self.training = training or TrainOptions()
        self.stats = CodingStats()
        if cluster is not None:
            self.worker_spec()  # refuses what workers cannot do before any work

    def _geometry(self, level: Level, chunk_size: int | None, window: int | None) -> tuple[int, int | None]:
        """Chunk size and window: those given, else the level's (its window up to half the
        context where the level says), its chunks no longer than `_longest_chunk`; a float
        forward has no window, so there the level's window is its chunk size."""
        if self.precision != EXACT:
            return chunk_size or level.window or level.chunk_size, None
        if window is None:
            window = max(level.window, self._context() // 2) if level.half_context else level.window
        if chunk_size is None:
            chunk_size = min(level.chunk_size, self._longest_chunk(window))
        return chunk_size, window

    def _fitting_chunk(self) -> int:
        """The longest chunk within the model's context: 15/16 of it (the rest for steering)."""
        return (self._context() - 1) * 15 // 16

    def _longest_chunk(self, window: int | None) -> int:
        """The longest chunk a level codes: one within the context, or MAX_STREAM tokens where
        the forward pins the sinks before a window that fits there."""
        pins = versions.pins_sinks(forward_name(self.model.model, self.precision), window)
        return MAX_STREAM if pins and window + SINK_TOKENS <= self._fitting_chunk() else self._fitting_chunk()

    def chunk_size_for(self, tokens: int) -> int:
        """Tokens per chunk for an input of `tokens` tokens: the chunk size asked for, else the
        level's, grown on large inputs where a window bounds the attention (`levels.chunk_size_for`)
        up to the context's length: longer, a large input would leave a cluster's workers fewer
        batches than they are (enwik8 at -6: 8 batches of 65 536-token chunks instead of 60)."""
        if self.chunk_size_given:
            return self.chunk_size
        return chunk_size_for(self.chunk_size, self.window, tokens, self._fitting_chunk())

    def _context(self) -> int:
        """Positions the model takes (the largest chunk size where it does not say)."""
        return getattr(self.model.model.config, "max_position_embeddings", None) or container.MAX_CHUNK_TOKENS + 1

    # -- compress ---------------------------------------------------------------------------

    def compress(
        self,
        data: bytes,
        progress: ByteProgress | None = None,
        steer: Steering | None = None,
        on_train_step: Callable[[float], None] | None = None,
    ) -> bytes:
        """The archive of `data`, in memory (see `compress_stream`)."""
        with closing(self.compress_stream(io.BytesIO(data), progress, steer, on_train_step)) as archive:
            return b"".join(archive.blocks())

    def compress_stream(
        self,
        stream: BinaryIO,
        progress: ByteProgress | None = None,
        steer: Steering | None = None,
        on_train_step: Callable[[float], None] | None = None,
    ) -> EncodedArchive:
        """The archive of what `stream` holds, with its payloads spooled to a temporary file.
        With `steer="auto"`, both the trained steering and none are coded and the smaller archive
        is kept (so progress runs twice). A `steer` given here (e.g. vectors trained once, coded
        under several priors) replaces the option's. `on_train_step` gets the loss after each
        training step of trained steering."""
        if self.precision != EXACT:
            warnings.warn(
                MachineBoundWarning(
                    f"model {self.model.name!r} runs a float forward ({self.precision}): the archive opens only "
                    "on a machine with the same kind of CPU, torch version and kernels"
                ),
                stacklevel=2,
            )
        started = time.perf_counter()
        with closing(TokenChunks(stream, self.model.tokenizer, self.chunk_size)) as chunks:
            chunks.chunk_size = self.chunk_size_for(chunks.tokens)
            auto = steer is None and self.steer[0] == "auto"
            if steer is None and self.steer[0] != "text":  # before minutes of training, not after
                forward = forward_name(self.model.model, self.precision)
                self._check_context(int(self.steer[1]), chunks.chunk_size, self.window, forward)
            steer = steer or self._steering(*self.steer, chunks, on_train_step)
            trained_seconds = time.perf_counter() - started
            if auto and steer.kind != "none":
                plain, plain_stats = self._code(chunks, Steering(), {}, progress)
                extensions = {container.UNSTEERED_SIZE_EXTENSION: container.varint(plain.size)}
                steered, stats = self._code(chunks, steer, extensions, progress)
                if steered.size < plain.size:
                    archive, dropped = steered, plain
                else:
                    archive, dropped, stats = plain, steered, plain_stats
                dropped.close()
                stats.unsteered_bytes = plain.size
            else:
                archive, stats = self._code(chunks, steer, {}, progress)
        stats.steering_seconds = trained_seconds
        stats.seconds = time.perf_counter() - started
        self.stats = stats
        return archive

    def _steering(
        self, kind: str, arg: str | int, chunks: TokenChunks, on_train_step: Callable[[float], None] | None
    ) -> Steering:
        """The steering to code with; `trained` and `auto` fit vectors to the chunks first."""
        model = self.model.model
        if kind == "text":
            return Steering("text", text=str(arg))
        if kind == "random":
            return Steering("random", seed=self.training.seed, scale=training.embedding_scale(model), count=int(arg))
        if kind in ("trained", "auto") and chunks:
            count = int(arg)
            autocast = self.precision == "bf16"  # train at the precision the coder will run
            with torch_threads(self.threads):
                vectors = training.train(
                    model, self.model.tokenizer, chunks, count, self.training, autocast, on_train_step
                )
            return Steering(
                "trained", count=count, coded=hyperprior.encode(vectors, self.prior, self.prior_bins, self.prior_clip)
            )
        return Steering()

    def _check_context(self, prefix_length: int, chunk_size: int, window: int | None, forward: str) -> None:
        """What a query attends must fit the model's context: the prefix and a chunk, or where
        `forward` pins the sinks before a shorter window, the prefix, sinks and window. The encoder
        checks its options, the decoder an archive's longest chunk (a window as long is not
        recorded)."""
        context = self._context()
        span, what = chunk_size, "chunk size"
        if versions.pins_sinks(forward, window) and window + SINK_TOKENS < chunk_size:
            span, what = window + SINK_TOKENS, "window plus sinks"
        if span + prefix_length >= context:  # the start token takes one position
            raise InvalidOptionError(
                f"{what} plus steering prefix ({span} + {prefix_length} tokens) must be below "
                f"{context} tokens, this model's context"
            )

    def _code(
        self, chunks: TokenChunks, steer: Steering, extensions: dict[int, bytes], progress: ByteProgress | None
    ) -> tuple[EncodedArchive, CodingStats]:
        """Code the chunks with `steer` as every chunk's prefix, batch by batch (here, or on the
        cluster's workers), into a payload spool; return the archive and its stats."""
        tokenizer = self.model.tokenizer
        prefix = steer.prefix(tokenizer, embedding_width(self.model))
        batch_size = balanced_batch_size(len(chunks), self.batch_size)
        longest = min(chunks.tokens, chunks.chunk_size)
        window = self.window if self.window is not None and self.window < longest else None  # else it changes nothing
        forward = forward_name(self.model.model, self.precision)
        self._check_context(0 if prefix is None else len(prefix), chunks.chunk_size, self.window, forward)
        side_models = versions.SIDE_MODELS if self.side_models else 0
        learns = versions.LEARNING if self.learning else 0
        plan = Plan(self.precision, forward, batch_size, steer.to_bytes(), window, side_models, learns)
        stats = CodingStats(
            input_bytes=chunks.input_bytes,
            tokens=chunks.tokens,
            chunks=len(chunks),
            chunk_size=chunks.chunk_size,
            window=window,
            side_models=plan.side_models,
            steering=steer.describe(),
        )
        starts = range(0, len(chunks), batch_size)
        batches = (chunks[first : first + batch_size] for first in starts)
        if self.cluster is not None:
            coded_batches = self.cluster.encode(self.worker_spec(), plan, batches, progress)
        else:
            on_symbols = _symbol_progress(tokenizer, progress)
            coded_batches = (self.encode_batch(plan, batch, on_symbols) for batch in batches)
        entries, payload_crc = [], 0
        payloads = tempfile.TemporaryFile()  # noqa: SIM115 (handed on in the EncodedArchive)
        try:
            for first, coded in zip(starts, coded_batches, strict=True):
                for tokens, payload in zip(chunks[first : first + batch_size], coded.payloads, strict=True):
                    original = tokenizer.decode(tokens)
                    stored = original if payload is None else payload  # None: a raw chunk
                    coded_tokens = len(tokens) if payload is not None else 0  # 0 marks a raw chunk
                    entries.append(ChunkEntry(coded_tokens, len(stored), zlib.crc32(original)))
                    payloads.write(stored)
                    payload_crc = zlib.crc32(stored, payload_crc)
                stats.raw_chunks += coded.payloads.count(None)
                stats.ideal_bits += coded.ideal_bits
                stats.coded_bits += 8 * sum(len(p) for p in coded.payloads if p is not None)
        except BaseException:
            payloads.close()
            raise
        if steer.kind != "none":
            extensions = extensions | {container.STEERING_EXTENSION: steer.to_bytes()}
        if window is not None:
            extensions = extensions | {container.WINDOW_EXTENSION: container.varint(window)}
        if plan.side_models:
            extensions = extensions | {container.SIDE_EXTENSION: container.varint(plan.side_models)}
        if plan.learning:
            extensions = extensions | {container.LEARNING_EXTENSION: container.varint(plan.learning)}
        extensions = extensions | {container.LEVEL_EXTENSION: container.varint(self.level)}
        torch_version, cpu, step = _runtime(self.model, self.precision)
        header = Header(
            model_name=self.model.name,
            model_fingerprint=self.model.fingerprint,
            roles=tokenizer.roles,
            chunk_size=chunks.chunk_size,
            batch_size=batch_size,
            threads=self.threads,
            precision=self.precision,
            step=step,
            torch_version=torch_version,
            cpu_capability=cpu,
            original_size=chunks.input_bytes,
            checksum=chunks.sha256.digest()[: container.CHECKSUM_BYTES],
            chunks=entries,
            extensions=extensions,
        )
        archive = EncodedArchive(container.pack_header(header, payload_crc), payloads)
        stats.payload_bytes = archive.size - len(archive.header)
        stats.archive_bytes = archive.size
        stats.steering_bytes = len(steer.to_bytes())
        return archive, stats

    def worker_spec(self) -> WorkerSpec:
        """What a cluster worker loads to code this compressor's batches."""
        if self.source is None:
            raise InvalidOptionError("workers load the model by name: pass its alias, Hugging Face id or path")
        if self.precision != EXACT:
            raise InvalidOptionError(
                f"workers need the exact predictor: a {self.precision} archive opens only on its encoder's machine type"
            )
        return WorkerSpec(self.source, self.model.fingerprint, self.device_option)

    def prepare(self) -> None:
        """Prepare the exact model now rather than on the first batch."""
        if self._exact_model is None and self.precision == EXACT:
            self._exact_model = exact_model(self.model, self.device)

    def _predictor(self, plan: Plan) -> Predictor:
        """The plan's predictor: exact (any rows), or float (exactly the plan's rows, no window).
        Kept for the next batch of the same plan."""
        if self._plan_predictor is not None and self._plan_predictor[0] == plan:
            return self._plan_predictor[1]
        steer = Steering.from_bytes(plan.steering)
        prefix = steer.prefix(self.model.tokenizer, embedding_width(self.model))
        rows, alphabet_size = max(plan.rows, MIN_ROWS), self.model.tokenizer.alphabet_size
        if plan.precision != EXACT:
            predictor: Predictor = FloatPredictor(self.model.model, rows, alphabet_size, plan.precision, prefix)
        else:
            self.prepare()
            assert self._exact_model is not None
            learner = self._learner_of(self._exact_model) if plan.learning else None
            model = self._exact_model if learner is None else learner.model
            predictor = ExactPredictor(model, alphabet_size, prefix, plan.window, plan.forward, learner)
        self._plan_predictor = plan, predictor
        return predictor

    def _learner_of(self, model: ExactModel) -> Learner:
        """The learner (kept: its maps hold the checkpoint's weights in float64, a second to make)."""
        if self._learner is None:
            maps = model.projection_maps(self.model.model, model.config)
            self._learner = Learner(model, maps)
        return self._learner

    def encode_batch(self, plan: Plan, batch: list[np.ndarray], on_symbols: Progress | None = None) -> CodedBatch:
        """Code one batch of chunks. A chunk is stored raw (None) when coding does not shrink it.

        A raw chunk's row is idle in the decoder, which does not know its tokens; where rows
        affect each other (a float predictor, side models) the batch is coded again without it
        (rare: only data the model cannot predict), the side models from the start. A chunk is
        raw when its tokens' code is not smaller: the batch's flags are the batch's."""
        predictor, tokenizer = self._predictor(plan), self.model.tokenizer
        sizes = [int(tokenizer.id_nbytes[c].sum()) for c in batch]  # each chunk's original bytes
        raw = [False] * len(batch)
        with torch_threads(self.threads):
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

    # -- decompress -------------------------------------------------------------------------

    def check_model(self, header: Header) -> None:
        """Refuse an archive this model and llmzip cannot reproduce the computation of."""
        if header.model_fingerprint != self.model.fingerprint:
            raise WrongModelError(
                f"archive needs model {header.model_name!r} (fingerprint {header.model_fingerprint.hex()}), "
                f"but {self.model.name!r} has fingerprint {self.model.fingerprint.hex()}"
            )
        if header.roles.model_vocab != self.model.tokenizer.model_vocab:  # same fingerprint: the header is damaged
            raise CorruptArchiveError(
                f"invalid header: a vocabulary of {header.roles.model_vocab} tokens, "
                f"but the model has {self.model.tokenizer.model_vocab}"
            )
        architecture = exact_architecture(self.model.model)
        versions.check_decodable(header, architecture and architecture.ARCHITECTURE, can_learn(self.model.model))

    def iter_decompress(self, archive: bytes | ArchiveReader, progress: ByteProgress | None = None) -> Iterator[bytes]:
        """Yield the original bytes batch by batch. A chunk failing its CRC raises before its batch
        is yielded; the whole-file checksum (and, from a pipe, the payload CRC) is checked after
        the last batch, so consume the iterator to its end before trusting what it gave."""
        reader = archive if isinstance(archive, ArchiveReader) else ArchiveReader(io.BytesIO(archive))
        header = reader.header
        self.check_model(header)
        tokenizer = self.model.tokenizer
        steer = Steering.from_bytes(header.extensions.get(container.STEERING_EXTENSION, b""))
        prefix = steer.prefix(tokenizer, embedding_width(self.model))
        longest = max((chunk.tokens for chunk in header.chunks), default=0)
        self._check_context(0 if prefix is None else len(prefix), longest, header.window, header.step)
        # An exact archive decodes in any thread count and, without side models or learning, in any batch.
        bound = header.machine_bound or header.side_models or header.learning_version
        batch = header.batch_size if bound else balanced_batch_size(len(header.chunks), self.batch_size)
        side_models = header.side_models_version if header.side_models else 0
        plan = Plan(
            header.precision, header.step, batch, steer.to_bytes(), header.window, side_models, header.learning_version
        )
        threads = decoding_threads(header) if header.machine_bound else self.threads
        batches = enumerate(reader.payload_batches(batch))
        jobs = ((stored, header.chunks[k * batch : (k + 1) * batch]) for k, stored in batches)
        if self.cluster is not None and not header.machine_bound:  # float rows are machine-bound: decoded here
            decoded = self.cluster.decode(self.worker_spec(), plan, jobs, progress)
        else:
            decoded = self._decode_batches(plan, jobs, threads, _symbol_progress(tokenizer, progress))
        digest, size = hashlib.sha256(), 0
        for k, chunks in enumerate(decoded):
            entries = header.chunks[k * batch : (k + 1) * batch]
            for i, (entry, chunk) in enumerate(zip(entries, chunks, strict=True)):
                if zlib.crc32(chunk) != entry.crc32:
                    runtime = _runtime(self.model, header.precision)
                    raise DecodeMismatchError(_mismatch_message(k * batch + i, header, runtime, threads))
                if entry.raw and progress:
                    progress(len(chunk))
            block = b"".join(chunks)
            digest.update(block)
            size += len(block)
            yield block
        if size != header.original_size or digest.digest()[: container.CHECKSUM_BYTES] != header.checksum:
            raise DecodeMismatchError("decoded data fails the whole-file checksum")

    def _decode_batches(
        self, plan: Plan, jobs: Iterable[Job], threads: int, on_symbols: Progress | None
    ) -> Iterator[list[bytes]]:
        """Decode batch after batch here."""
        with torch_threads(threads):
            for stored, entries in jobs:
                yield self.decode_batch(plan, stored, entries, on_symbols)

    def decode_batch(
        self,
        plan: Plan,
        stored: list[bytes],
        entries: list[ChunkEntry],
        on_symbols: Progress | None = None,
    ) -> list[bytes]:
        """One batch's chunks as they decode (raw ones as stored), not yet checked against their CRCs."""
        predictor = self._predictor(plan)
        coded = [b"" if e.raw else p for e, p in zip(entries, stored, strict=True)]
        lengths = [e.tokens for e in entries]
        tokens = decode_batch(predictor, coded, lengths, self.model.tokenizer.roles, on_symbols, plan.side_models)
        return [p if e.raw else self.model.tokenizer.decode(t) for e, p, t in zip(entries, stored, tokens, strict=True)]

    def decompress(self, archive: bytes, progress: ByteProgress | None = None) -> bytes:
        return b"".join(self.iter_decompress(archive, progress))


class EncodedArchive:
    """A finished archive: its header in memory, its payloads in a temporary file."""

    def __init__(self, header: bytes, payloads: BinaryIO) -> None:
        self.header, self.payloads = header, payloads
        self.size = len(header) + payloads.seek(0, io.SEEK_END)

    def blocks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The archive's bytes, header first, at most `size` at a time."""
        yield self.header
        self.payloads.seek(0)
        while block := self.payloads.read(size):
            yield block

    def close(self) -> None:
        self.payloads.close()


def embedding_width(model: LoadedModel) -> int:
    return model.model.get_input_embeddings().weight.shape[1]


def _symbol_progress(tokenizer: ByteTokenizer, progress: ByteProgress | None) -> Progress | None:
    """Report coded symbols to a byte-counting progress callback."""
    if progress is None:
        return None
    return lambda symbols: progress(int(tokenizer.id_nbytes[symbols].sum()))


def balanced_batch_size(n_chunks: int, most: int) -> int:
    """The fewest batches of at most `most` chunks, filled evenly: 17 chunks at most 16 a batch
    run as 9 + 8 rows rather than 16 + 1 (each batch costs as many steps as its longest chunk)."""
    n_batches = -(-n_chunks // most)
    return -(-n_chunks // n_batches) if n_chunks else most


def decoding_threads(header: Header) -> int:
    """The encoder's thread count, but no more than this machine's CPUs: row results were measured
    thread-invariant (1 and 2 threads), more threads than CPUs only slow every step down (a
    damaged header asking for 1000 would stall the decoder), and the CRCs catch any difference."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(header.threads, cpus)


def _mismatch_message(index: int, header: Header, runtime: tuple[str, str, str], threads: int) -> str:
    message = f"chunk {index} fails its CRC check after decoding"
    if not header.machine_bound:  # exact probabilities do not depend on the runtime
        return f"{message}: the archive is damaged"
    if runtime != (header.torch_version, header.cpu_capability, header.step):
        torch_version, cpu, step = runtime
        return (
            f"{message}: the archive was made with torch {header.torch_version} on CPU capability "
            f"{header.cpu_capability} ({header.step}), this is torch {torch_version} on {cpu} "
            f"({step}), and the model's probabilities differ; decompress with the encoder's versions and CPU type"
        )
    if threads != header.threads:
        return (
            f"{message}: the archive was made with {header.threads} threads and this machine runs {threads}, "
            "or the archive is damaged; decompress on a machine with as many CPUs"
        )
    return f"{message}: the archive is damaged"


def compress(data: bytes, model: str | LoadedModel = DEFAULT_MODEL, **options: int) -> bytes:
    """Compress `data` with `model` (an alias, Hugging Face id, local directory or .gguf file)."""
    return Compressor(model, **options).compress(data)


def decompress(archive: bytes, model: str | LoadedModel | None = None) -> bytes:
    """Decompress `archive`, loading the model it names unless one is given."""
    if model is None:
        model = ArchiveReader(io.BytesIO(archive)).header.model_name
    return Compressor(model).decompress(archive)
