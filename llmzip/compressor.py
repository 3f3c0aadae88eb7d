"""Compress and decompress, top to bottom: bytes -> tokens (spooled) -> chunks -> batches of chunks
coded in lockstep with the model (batches.py, here or on Ray's workers) -> payloads (spooled) ->
container, and back."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, replace
from typing import BinaryIO

import numpy as np
import torch

from . import container, levels, versions
from .aliases import ALIASES, DEFAULT_MODEL
from .batches import BatchCoder, ByteProgress, CodedBatch, LocalBatches, Plan, torch_threads
from .chunking import TokenChunks
from .cluster import Cluster, RayBatches, WorkerSpec
from .container import EXACT, ArchiveReader, ChunkEntry, Header
from .errors import CorruptArchiveError, DecodeMismatchError, InvalidOptionError, WrongModelError
from .exact.architectures import can_learn
from .journal import Journal, Record, digest, job_of, replay
from .levels import LEVELS
from .model_choice import AUTO, ModelChoice, choose_for
from .models import LoadedModel, load_model
from .options import Options
from .predictor import default_precision, forward_name
from .steering import hyperprior, training
from .steering.soft_prompt import Steering, parse_spec


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


class MachineBoundWarning(UserWarning):
    """The archive will open only where the encoder's floats can be reproduced."""


def _runtime(model: LoadedModel, precision: str) -> tuple[str, str, str]:
    """What besides the archive's geometry decides a float forward: torch, the CPU's kernels, the forward."""
    return torch.__version__, cpu_capability(), forward_name(model.architecture, precision)


def cpu_capability() -> str:
    """torch's kernel level plus the units oneDNN picks bfloat16 kernels by, e.g. `AVX512+bf16+amx`."""
    units = [("bf16", torch.cpu._is_avx512_bf16_supported), ("amx", torch.cpu._is_amx_tile_supported)]
    return "+".join([torch.backends.cpu.get_cpu_capability()] + [name for name, has in units if has()])


class Compressor:
    """Keeps a model loaded between calls; `compress` and `decompress` work on bytes."""

    def __init__(
        self,
        model: str | LoadedModel = DEFAULT_MODEL,
        options: Options | None = None,
        *,
        cluster: Cluster | None = None,
        choice: ModelChoice | None = None,
        **settings: object,
    ) -> None:
        """`options`, with any of its fields given as keywords (`Compressor(model, level=9)`).
        `cluster`: code batches on its workers, which load `model` by name (exact predictor only).
        `choice`: how `--model auto` chose `model`, recorded in the archives' headers."""
        options = replace(options or Options(), **settings)
        self.options = options
        self.model = model if isinstance(model, LoadedModel) else load_model(model)
        # what a worker loads: the name given, or a built-in model's
        self.source = model if isinstance(model, str) else model.name if model.name in ALIASES else None
        self.choice = choice
        architecture = self.model.architecture
        if options.precision == EXACT and architecture is None:
            raise InvalidOptionError(
                f"model {self.model.name!r} ({self.model.facts.model_type}) has no exact predictor in llmzip; "
                f"use --precision {default_precision(None)} (machine-bound archives)"
            )
        self.batch_size = options.batch_size
        self.threads = options.threads or torch.get_num_threads()
        self.precision = options.precision or default_precision(architecture)
        exact = self.precision == EXACT
        for what, asked in (
            ("an attention window needs", options.window is not None),
            ("side models need", options.side_models),
        ):
            if asked and not exact:
                raise InvalidOptionError(f"{what} the exact predictor, not precision {self.precision}")
        self.forward = forward_name(architecture, self.precision)
        level = LEVELS[options.level]
        self.level = options.level
        self.chunk_size, self.window = levels.geometry(
            options.level, self.context, self.forward if exact else None, options.chunk_size, options.window
        )
        self.side_models = (level.side if options.side_models is None else options.side_models) and exact
        learnable = exact and can_learn(architecture)
        if options.learn and not learnable:
            raise InvalidOptionError("learning needs the exact predictor of a Llama model")
        self.learning = level.learn and learnable if options.learn is None else options.learn
        self.coder = BatchCoder(self.model, options.device)
        self.device = self.coder.device
        self.cluster = cluster
        self.steer = parse_spec(options.steer)
        self.stats = CodingStats()
        if cluster is not None:
            self.worker_spec()  # refuses what workers cannot do before any work

    @property
    def context(self) -> int:
        """Positions the model takes (the largest chunk size where it does not say)."""
        return self.model.facts.context or container.MAX_CHUNK_TOKENS + 1

    def chunk_size_for(self, tokens: int) -> int:
        """Tokens per chunk for an input of `tokens` tokens: the chunk size asked for, else the
        level's, grown on large inputs where a window bounds the attention (`levels.chunk_size_for`)
        up to the context's length: longer, a large input would leave a cluster's workers fewer
        batches than they are (enwik8 at -6: 8 batches of 65 536-token chunks instead of 60)."""
        if self.options.chunk_size is not None:
            return self.chunk_size
        return levels.chunk_size_for(self.chunk_size, self.window, tokens, levels.fitting_chunk(self.context))

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
        journal: str | None = None,
    ) -> EncodedArchive:
        """The archive of what `stream` holds, with its payloads spooled to a temporary file.
        With `steer="auto"`, both the trained steering and none are coded and the smaller archive
        is kept (so progress runs twice). A `steer` given here (e.g. vectors trained once, coded
        under several priors) replaces the option's. `on_train_step` gets the loss after each
        training step of trained steering. `journal`: a file keeping each finished batch of more
        than one, from which the same compress, run again, resumes (journal.py); the caller
        removes it once the archive is written."""
        if self.precision != EXACT:
            warnings.warn(
                MachineBoundWarning(
                    f"model {self.model.name!r} runs a float forward ({self.precision}): the archive opens only "
                    "on a machine with the same kind of CPU, torch version and kernels"
                ),
                stacklevel=2,
            )
        started = time.perf_counter()
        with (
            closing(TokenChunks(stream, self.model.tokenizer, self.chunk_size)) as chunks,
            ExitStack() as journals,
        ):
            chunks.chunk_size = self.chunk_size_for(chunks.tokens)
            job = job_of("compress", self.model.fingerprint, chunks.sha256.digest())
            if kept := Journal.open(journal, job, -(-len(chunks) // self.batch_size)):
                journals.enter_context(closing(kept))
            auto = steer is None and self.steer[0] == "auto"
            if steer is None and self.steer[0] != "text":  # before minutes of training, not after
                levels.check_context(self.context, self.forward, int(self.steer[1]), chunks.chunk_size, self.window)
            steer = steer or self._steering(*self.steer, chunks, on_train_step)
            trained_seconds = time.perf_counter() - started
            if auto and steer.kind != "none":
                plain, plain_stats = self._code(chunks, Steering(), {}, progress, kept)
                extensions = {container.UNSTEERED_SIZE_EXTENSION: container.varint(plain.size)}
                steered, stats = self._code(chunks, steer, extensions, progress, kept)
                if steered.size < plain.size:
                    archive, dropped = steered, plain
                else:
                    archive, dropped, stats = plain, steered, plain_stats
                dropped.close()
                stats.unsteered_bytes = plain.size
            else:
                archive, stats = self._code(chunks, steer, {}, progress, kept)
        stats.steering_seconds = trained_seconds
        stats.seconds = time.perf_counter() - started
        self.stats = stats
        return archive

    def _steering(
        self, kind: str, arg: str | int, chunks: TokenChunks, on_train_step: Callable[[float], None] | None
    ) -> Steering:
        """The steering to code with; `trained` and `auto` fit vectors to the chunks first."""
        if kind == "text":
            return Steering("text", text=str(arg))
        if kind == "random":
            seed = self.options.training.seed
            return Steering("random", seed=seed, scale=training.embedding_scale(self.model.model), count=int(arg))
        if kind in ("trained", "auto") and chunks:
            count = int(arg)
            autocast = self.precision == "bf16"  # train at the precision the coder will run
            with torch_threads(self.threads):
                vectors = training.train(
                    self.model.model,
                    self.model.tokenizer,
                    chunks,
                    count,
                    self.options.training,
                    autocast,
                    on_train_step,
                )
            o = self.options
            return Steering(
                "trained", count=count, coded=hyperprior.encode(vectors, o.prior, o.prior_bins, o.prior_clip)
            )
        return Steering()

    def _code(
        self,
        chunks: TokenChunks,
        steer: Steering,
        extensions: dict[int, bytes],
        progress: ByteProgress | None,
        journal: Journal | None,
    ) -> tuple[EncodedArchive, CodingStats]:
        """Code the chunks with `steer` as every chunk's prefix, batch by batch (here, or on the
        cluster's workers, or from the journal where it holds a batch), into a payload spool;
        return the archive and its stats."""
        tokenizer = self.model.tokenizer
        prefix = steer.prefix(tokenizer, self.model.facts.width)
        batch_size = balanced_batch_size(len(chunks), self.batch_size)
        longest = min(chunks.tokens, chunks.chunk_size)
        window = self.window if self.window is not None and self.window < longest else None  # else it changes nothing
        levels.check_context(
            self.context, self.forward, 0 if prefix is None else len(prefix), chunks.chunk_size, self.window
        )
        side_models = versions.SIDE_MODELS if self.side_models else 0
        learns = versions.LEARNING if self.learning else 0
        plan = Plan(self.precision, self.forward, batch_size, steer.to_bytes(), window, side_models, learns)
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
        executor = self._batches(self.threads)

        def run(indices: list[int]) -> Iterator[Record]:
            batches = (chunks[starts[k] : starts[k] + batch_size] for k in indices)
            return ((c.payloads, c.ideal_bits) for c in executor.encode(plan, batches, progress))

        on_symbols = self.coder.symbol_progress(progress)

        def reused(k: int, record: Record) -> None:
            if on_symbols:
                on_symbols(np.concatenate(chunks[starts[k] : starts[k] + batch_size]))

        tags = [b""] * len(starts)
        if journal is not None:  # what a batch's code depends on besides the job; floats: the runtime too
            bound = (*_runtime(self.model, plan.precision), str(self.threads)) if plan.precision != EXACT else ()
            tags = [
                journal.tag(
                    repr(plan), str(k), *bound, *(tokens.tobytes() for tokens in chunks[first : first + batch_size])
                )
                for k, first in enumerate(starts)
            ]
        coded_batches = (CodedBatch(*record) for record in replay(journal, tags, run, reused))
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
        if self.choice is not None and (record := self.choice.record()) is not None:
            extensions = extensions | {container.MODEL_CHOICE_EXTENSION: record}
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
        return WorkerSpec(self.source, self.model.fingerprint, self.options.device)

    def prepare(self) -> None:
        """Prepare the exact model now rather than on the first batch."""
        if self.precision == EXACT:
            self.coder.prepare()

    def _batches(self, threads: int) -> LocalBatches | RayBatches:
        """Where batches are coded: on the cluster's workers, else here on `threads` threads."""
        return LocalBatches(self.coder, threads) if self.cluster is None else self.cluster.batches(self.worker_spec())

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
        architecture = self.model.architecture
        versions.check_decodable(header, architecture and architecture.ARCHITECTURE, can_learn(architecture))

    def iter_decompress(
        self, archive: bytes | ArchiveReader, progress: ByteProgress | None = None, journal: str | None = None
    ) -> Iterator[bytes]:
        """Yield the original bytes batch by batch. A chunk failing its CRC raises before its batch
        is yielded; the whole-file checksum (and, from a pipe, the payload CRC) is checked after
        the last batch, so consume the iterator to its end before trusting what it gave.
        `journal`: as for `compress_stream`, from which the same decompress resumes."""
        reader = archive if isinstance(archive, ArchiveReader) else ArchiveReader(io.BytesIO(archive))
        header = reader.header
        self.check_model(header)
        tokenizer = self.model.tokenizer
        steer = Steering.from_bytes(header.extensions.get(container.STEERING_EXTENSION, b""))
        prefix = steer.prefix(tokenizer, self.model.facts.width)
        longest = max((chunk.tokens for chunk in header.chunks), default=0)
        levels.check_context(self.context, header.step, 0 if prefix is None else len(prefix), longest, header.window)
        # An exact archive decodes in any thread count and, without side models or learning, in any batch.
        bound = header.machine_bound or header.side_models or header.learning_version
        batch = header.batch_size if bound else balanced_batch_size(len(header.chunks), self.batch_size)
        side_models = header.side_models_version if header.side_models else 0
        plan = Plan(
            header.precision, header.step, batch, steer.to_bytes(), header.window, side_models, header.learning_version
        )
        threads = decoding_threads(header) if header.machine_bound else self.threads
        executor = LocalBatches(self.coder, threads) if header.machine_bound else self._batches(threads)
        payloads = enumerate(reader.payload_batches(batch))
        entries = [header.chunks[first : first + batch] for first in range(0, len(header.chunks), batch)]

        def run(indices: list[int]) -> Iterator[Record]:
            wanted = set(indices)
            jobs = ((stored, entries[k]) for k, stored in payloads if k in wanted)
            return ((chunks, 0.0) for chunks in executor.decode(plan, jobs, progress))

        def reused(k: int, record: Record) -> None:
            if progress:
                progress(sum(len(c or b"") for c, e in zip(record[0], entries[k], strict=True) if not e.raw))

        with ExitStack() as journals:
            job = job_of("decompress", header.model_fingerprint, digest(repr(header), str(reader.payload_crc)))
            tags = [b""] * len(entries)
            if kept := Journal.open(journal, job, len(entries)):
                journals.enter_context(closing(kept))
                bound_threads = str(threads) if header.machine_bound else ""
                tags = [kept.tag(repr(plan), str(k), bound_threads) for k in range(len(entries))]
            whole, size = hashlib.sha256(), 0
            for k, (chunks, _) in enumerate(replay(kept, tags, run, reused)):
                for i, (entry, chunk) in enumerate(zip(entries[k], chunks, strict=True)):
                    if chunk is None or zlib.crc32(chunk) != entry.crc32:
                        runtime = _runtime(self.model, header.precision)
                        raise DecodeMismatchError(_mismatch_message(k * batch + i, header, runtime, threads))
                    if entry.raw and progress:
                        progress(len(chunk))
                block = b"".join(chunks)  # type: ignore[arg-type] (no None: checked above)
                whole.update(block)
                size += len(block)
                yield block
            for _ in payloads:  # batches the journal held: read still, for the payload CRC
                pass
        if size != header.original_size or whole.digest()[: container.CHECKSUM_BYTES] != header.checksum:
            raise DecodeMismatchError("decoded data fails the whole-file checksum")

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


def compress(data: bytes, model: str | LoadedModel = AUTO, **settings: object) -> bytes:
    """Compress `data` with `model` (an alias, Hugging Face id, local directory or .gguf file;
    `auto`: the built-in model a probe of `data` picks); `settings`: any of Options' fields."""
    if model == AUTO:
        options = Options(**settings)  # type: ignore[arg-type]
        model, choice = choose_for(io.BytesIO(data), len(data), options)
        return Compressor(model, options, choice=choice).compress(data)
    return Compressor(model, **settings).compress(data)


def decompress(archive: bytes, model: str | LoadedModel | None = None) -> bytes:
    """Decompress `archive`, loading the model it names unless one is given."""
    if model is None:
        model = ArchiveReader(io.BytesIO(archive)).header.model_name
    return Compressor(model).decompress(archive)
