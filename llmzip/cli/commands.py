"""Command line, in the conventions of gzip/xz/zstd: `llmzip compress|decompress|test|info|models`."""

from __future__ import annotations

import functools
import io
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from typing import TYPE_CHECKING, Any

import click

from .. import __version__, container, notices
from ..aliases import ALIASES, alias_path
from ..chunking import DEFAULT_BATCH_SIZE
from ..cluster import Cluster
from ..container import Header
from ..errors import LlmzipError
from ..levels import BEST, DEFAULT_LEVEL, FASTEST, LEVELS, MAX_STREAM
from ..model_choice import AUTO, CANDIDATES, ModelChoice, choose_for
from ..options import Options
from ..process import tune_process
from ..steering import hyperprior
from ..steering.soft_prompt import Steering, TrainOptions
from .files import (
    check_overwrite,
    input_mode,
    journal_path,
    open_input,
    plan_output,
    remove_input,
    resumable,
    spooled,
    stream_size,
    write_atomically,
)

# The coder (`compressor`: torch and transformers, about 7 s to import) is imported by the
# commands that code, so that --help, info, models and errors in the options answer at once.
if TYPE_CHECKING:
    from ..compressor import Compressor

SUFFIX = ".lz"


class _Cli(click.Group):
    """Accepts `llmzip -d FILE` for `llmzip decompress FILE` and turns every error into one line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] in ("-d", "--decompress"):
            args = ["decompress", *args[1:]]
        return super().parse_args(ctx, args)

    def main(self, args: list[str] | None = None, *a: Any, **kw: Any) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        kw["standalone_mode"] = False
        tune_process()  # before torch is imported
        for signum in (signal.SIGTERM, signal.SIGHUP):  # exit through `finally` blocks, which remove temp files
            signal.signal(signum, _exit_on_signal)
        try:
            result = super().main(args, *a, **kw)
            sys.exit(result if isinstance(result, int) else 0)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help())
            sys.exit(0)
        except (click.exceptions.Abort, KeyboardInterrupt):
            click.echo("llmzip: interrupted", err=True)
            sys.exit(130)
        except click.ClickException as e:
            _fail(e.format_message())
        except LlmzipError as e:
            _fail(str(e), debug="--debug" in args)
        except OSError as e:
            where = f": {e.filename}" if e.filename else ""
            _fail(f"{e.strerror or e}{where}", debug="--debug" in args)
        except Exception as e:  # a bug: still one line unless --debug
            _fail(f"internal error: {type(e).__name__}: {e} (rerun with --debug for a traceback)", "--debug" in args)


def _exit_on_signal(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


def _fail(message: str, debug: bool = False) -> None:
    if debug:
        traceback.print_exc()
    click.echo(f"llmzip: error: {message}", err=True)
    sys.exit(1)


def _verbosity(run: Callable) -> Callable:
    """-q, -v and --debug; notices (first-run work, progress bars, warnings) shown unless -q."""

    @functools.wraps(run)
    def f(*args: Any, **kwargs: Any) -> Any:
        notices.show(kwargs["quiet"])
        return run(*args, **kwargs)

    f = click.option("--debug", is_flag=True, help="Show a traceback on error.")(f)
    f = click.option("-v", "--verbose", is_flag=True, help="Print details.")(f)
    return click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")(f)


def _output_options(f: Callable) -> Callable:
    f = click.option("--rm", "remove", is_flag=True, help="Remove FILE after success.")(f)
    f = click.option("-f", "--force", is_flag=True, help="Overwrite an existing output file.")(f)
    f = click.option("-c", "--stdout", "to_stdout", is_flag=True, help="Write to standard output.")(f)
    f = click.option("-o", "--output", help="Output file (default: FILE.lz, or FILE without .lz).")(f)
    return click.argument("file", default="-")(f)


def _geometry_options(f: Callable) -> Callable:
    f = click.option(
        "--device", default="auto", show_default=True,
        help="Where the exact predictor runs: auto (CUDA if present), cpu, cuda, cuda:N. Archives are the same.",
    )(f)  # fmt: skip
    f = click.option(
        "--ray", "ray_address", metavar="ADDRESS",
        help="Code on an existing Ray cluster (HOST:PORT, ray://HOST:PORT or auto), one worker per --threads CPUs.",
    )(f)  # fmt: skip
    f = click.option(
        "--workers", type=click.IntRange(1), default=None,
        help="Code batches on N Ray workers (a local cluster, or --ray's); the archive is the same.",
    )(f)  # fmt: skip
    f = click.option("--threads", type=click.IntRange(1, container.MAX_THREADS), help="Torch threads (per worker).")(f)
    return click.option(
        "--batch-size", type=click.IntRange(1, container.MAX_ROWS), default=DEFAULT_BATCH_SIZE,
        show_default=True, help="Most chunks coded together.",
    )(f)  # fmt: skip


def _level_options(f: Callable) -> Callable:
    """-1 ... -9, --fast (-1) and --best (-9), as zstd and xz spell them; chunk size and window
    given alone override the level's."""
    f = click.option(
        "--window", type=click.IntRange(1, container.MAX_CHUNK_TOKENS), default=None,
        help="Tokens each token attends besides the first (exact predictor) [default: the level's].",
    )(f)  # fmt: skip
    f = click.option("--chunk-size", type=click.IntRange(1, container.MAX_CHUNK_TOKENS), default=None,
                     help="Tokens per chunk [default: the level's].")(f)  # fmt: skip
    f = click.option("--best", "level", type=int, flag_value=BEST, help=f"Smallest archive: -{BEST}.")(f)
    f = click.option("--fast", "level", type=int, flag_value=FASTEST, help=f"Fastest: -{FASTEST}.")(f)
    for n in sorted(LEVELS, reverse=True):
        level = LEVELS[n]
        sees = "each token sees its whole chunk" if level.window is None else f"window {level.window}"
        sees += " (or half the model's context, if longer)" if level.half_context else ""
        sees += ", side models" if level.side else ""
        sees += ", weights learning (Llama)" if level.learn else ""
        sees += ", auto: a slower model if " + (f"{level.auto_gain}% smaller" if level.auto_gain else "smaller")
        more = "" if level.window is None or level.chunk_size >= MAX_STREAM else " (more on large files)"
        default = " (default)" if n == DEFAULT_LEVEL else ""
        f = click.option(f"-{n}", "level", type=int, flag_value=n,
                         help=f"Level {n}{default}: chunks of {level.chunk_size} tokens{more}, {sees}.")(f)  # fmt: skip
    return f


def _steering_options(f: Callable) -> Callable:
    defaults = TrainOptions()
    options = [
        ("--steer", dict(default="none", show_default=True, help="Soft prompt: none, text:STRING, random:N, trained:N, "
                         "or auto (train, keep only if the archive gets smaller).")),
        ("--prior", dict(type=click.Choice(hyperprior.PRIORS), default="gaussian", show_default=True,
                         help="Prior coding trained vectors.")),
        ("--prior-bins", dict(type=click.IntRange(2, hyperprior.MAX_BINS), default=hyperprior.DEFAULT_BINS,
                              show_default=True, help="Quantization levels of trained vectors.")),
        ("--prior-clip", dict(type=click.FloatRange(0, 50, max_open=True), default=None,
                              help="Bins span the P-th to (100-P)-th percentile [default: 0 gaussian, 1 empirical].")),
        ("--steer-steps", dict(type=click.IntRange(0), default=defaults.steps, show_default=True, help="Adam steps.")),
        ("--steer-lr", dict(type=click.FloatRange(0, min_open=True), default=defaults.lr, show_default=True,
                            help="Adam learning rate.")),
        ("--steer-chunks", dict(type=click.IntRange(1), default=defaults.chunks, show_default=True,
                                help="Chunks trained on, spread over the file.")),
        ("--steer-tokens", dict(type=click.IntRange(1), default=defaults.tokens, show_default=True,
                                help="Leading tokens of each training chunk.")),
    ]  # fmt: skip
    for name, kwargs in reversed(options):
        f = click.option(name, **kwargs)(f)
    return f


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="llmzip")
def main() -> None:
    """Lossless compression with a language model. `llmzip -d FILE` = `llmzip decompress FILE`."""


@contextmanager
def _cluster(workers: int | None, address: str | None, threads: int | None) -> Iterator[Cluster | None]:
    """The Ray cluster asked for, stopped at the end (or on Ctrl-C); None: code in this process."""
    if workers is None and address is None:
        yield None
        return
    with Cluster(workers, address, threads) as cluster:
        yield cluster


def _report_workers(cluster: Cluster | None) -> None:
    """-v: what each worker did, and the batches retried after a worker died."""
    if cluster is None:
        return
    click.echo(f"  Ray: cluster ready in {cluster.start_seconds:.1f} s, {cluster.size} workers loaded in "
               f"{cluster.load_seconds:.1f} s, {cluster.retries} batches retried", err=True)  # fmt: skip
    for w in cluster.figures.values():
        speed = f"{w.input_bytes / w.seconds:.0f} B/s" if w.seconds else "-"
        threads = f"{w.threads} thread" + ("s" if w.threads > 1 else "")
        click.echo(
            f"  worker {w.name} ({w.device}, {threads}): model loaded in {w.load_seconds:.1f} s, "
            f"{w.batches} batches, {w.input_bytes} bytes in {w.seconds:.1f} s, {speed}",
            err=True,
        )


# -- commands -----------------------------------------------------------------------------


@main.command()
@_output_options
@click.option(
    "-m", "--model", default=AUTO, show_default=True,
    help="Alias, HF id, directory or .gguf; auto: the built-in model that codes a probe of the input best "
    "for the level's time (Gemma 3 where SmolLM2 knows the language little).",
)  # fmt: skip
@_level_options
@click.option(
    "--precision",
    type=click.Choice(container.PRECISIONS),
    default=None,
    help="exact (default where llmzip implements the model: archives open on any machine), or a float forward "
    "fp32/bf16/int8 (machine-bound archives).",
)
@click.option(
    "--learn/--no-learn", default=None,
    help="The model's weights learn as they code (dynamic evaluation; exact Llama models): a smaller archive, "
    "and compress and decompress about an order of magnitude slower [default: at "
    + ", ".join(f"-{n}" for n in LEVELS if LEVELS[n].learn) + ", where the model can].",
)  # fmt: skip
@_geometry_options
@_steering_options
@_verbosity
def compress(file, output, to_stdout, force, remove, model, workers, ray_address, quiet, verbose, debug, **settings):
    """Compress FILE (or standard input) to FILE.lz."""
    options = _options(settings)
    target = plan_output(file, output, to_stdout, lambda f: f + SUFFIX)
    check_overwrite(target, force)
    if target is None and sys.stdout.isatty():
        raise LlmzipError("will not write compressed data to a terminal; use -o or redirect")
    if remove and target is None:
        raise LlmzipError("--rm needs an output file")
    passes = 2 if options.steer.startswith("auto") else 1  # auto codes with and without the trained vectors
    journal = journal_path(target)
    with (
        resumable(journal),
        open_input(file) as stream,
        _cluster(workers, ray_address, options.threads) as cluster,
        ExitStack() as spool,
    ):
        from ..compressor import Compressor, MachineBoundWarning

        choice = None
        if model == AUTO:
            if not stream.seekable():  # the probe reads pieces from all over the input
                stream = spool.enter_context(spooled(stream))
            size = stream_size(stream) or stream.seek(0, io.SEEK_END)
            notices.say(f"choosing a model for {file}: {', '.join(CANDIDATES)} code a probe of it")
            model, choice = choose_for(stream, size, options)
        compressor = Compressor(model, options, cluster=cluster, choice=choice)
        size = stream_size(stream)
        trains = options.steer.startswith(("trained", "auto")) and size != 0
        steps = options.training.steps if trains else 0
        with (
            notices.bar(steps, "train steering", unit="step") as training_bar,
            notices.bar(size and passes * size, "compress") as coding_bar,
        ):

            def on_train_step(loss: float) -> None:
                training_bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                training_bar.update(1)
                if training_bar.n == training_bar.total:
                    coding_bar.reset()  # so the coding ETA does not count the training time

            with warnings.catch_warnings(record=True) as caught:  # printed here, whatever the warning filters say
                warnings.simplefilter("always", MachineBoundWarning)
                archive = compressor.compress_stream(
                    stream, coding_bar.update, on_train_step=on_train_step, journal=journal
                )
        for warning in caught:
            notices.warn(str(warning.message))
        with closing(archive):
            write_atomically(target, archive.blocks(), input_mode(file))
    remove_input(file, target, remove)
    if not quiet:
        s = compressor.stats
        ratio = 8 * s.archive_bytes / s.input_bytes if s.input_bytes else 0.0
        click.echo(
            f"{file}: {s.input_bytes} -> {s.archive_bytes} bytes, {ratio:.3f} bits/byte, "
            f"{s.input_bytes / s.seconds:.0f} B/s" + (f" -> {target}" if target else ""),
            err=True,
        )
        if verbose:
            overhead = 100 * (s.coded_bits / s.ideal_bits - 1) if s.ideal_bits else 0.0
            click.echo(
                f"  {s.tokens} tokens in {s.chunks} chunks ({s.raw_chunks} stored raw), "
                f"header {s.archive_bytes - s.payload_bytes} bytes, coder overhead {overhead:+.2f}% vs ideal",
                err=True,
            )
            click.echo(
                f"  steering {s.steering} ({s.steering_bytes} header bytes), trained in {s.steering_seconds:.1f} s, "
                f"coded in {s.seconds - s.steering_seconds:.1f} s"
                + (f"; without steering: {s.unsteered_bytes} bytes" if s.unsteered_bytes is not None else ""),
                err=True,
            )
            if compressor.choice is not None:
                click.echo(f"  model {compressor.model.name}, {compressor.choice.describe()}", err=True)
            _report_workers(cluster)


def _options(settings: dict[str, Any]) -> Options:
    """The Options a command's parameters give (named as Options' fields, and --steer-* for
    its training options); refused at once where they are out of range."""
    training = {
        name: settings.pop(f"steer_{name}")
        for name in ("steps", "lr", "chunks", "tokens")
        if f"steer_{name}" in settings
    }
    level = settings.pop("level", None) or DEFAULT_LEVEL
    return Options(level=level, training=TrainOptions(**training), **settings)


def _decoder(
    header: Header, model: str | None, options: Options, verbose: bool, cluster: Cluster | None = None
) -> Compressor:
    from ..compressor import Compressor

    compressor = Compressor(model or header.model_name, options, cluster=cluster)
    compressor.check_model(header)  # before any long work
    if verbose and header.machine_bound:
        click.echo(
            f"  model {header.model_name}, machine-bound archive: batch {header.batch_size}, {header.rows} rows, "
            f"{header.threads} threads{_fewer_threads(header)}, {header.precision} (used whatever the flags say)",
            err=True,
        )
    elif verbose:
        bound = header.side_models or header.learning_version
        batch = header.batch_size if bound else compressor.batch_size  # side models, learning: the encoder's
        click.echo(
            f"  model {header.model_name}, exact archive: batch {batch}, {compressor.threads} threads, "
            f"device {compressor.device}",
            err=True,
        )
    return compressor


def _fewer_threads(header: Header) -> str:
    from ..compressor import decoding_threads

    threads = decoding_threads(header)
    return f" (this machine runs {threads}: it has fewer CPUs)" if threads != header.threads else ""


@main.command()
@_output_options
@click.option("-m", "--model", default=None, help="Model to use (default: the one the archive names).")
@_geometry_options
@_verbosity
def decompress(file, output, to_stdout, force, remove, model, workers, ray_address, quiet, verbose, debug, **settings):
    """Decompress FILE.lz (or standard input). An exact archive decodes with any --batch-size,
    --threads and --device; a machine-bound one always runs the encoder's geometry."""

    def strip_suffix(f: str) -> str:
        if not f.endswith(SUFFIX) or f == SUFFIX:
            raise LlmzipError(f"{f}: unknown suffix (expected {SUFFIX}); use -o or -c")
        return f[: -len(SUFFIX)]

    options = _options(settings)
    target = plan_output(file, output, to_stdout, strip_suffix)
    check_overwrite(target, force)
    if remove and target is None:
        raise LlmzipError("--rm needs an output file")
    journal = journal_path(target)
    with resumable(journal), open_input(file) as stream:
        archive = container.ArchiveReader(stream)
        with _cluster(workers, ray_address, options.threads) as cluster:
            compressor = _decoder(archive.header, model, options, verbose, cluster)
            size = archive.header.original_size
            with notices.bar(size, "decompress") as bar:
                decoded = compressor.iter_decompress(archive, bar.update, journal)
                write_atomically(target, decoded, input_mode(file))
    remove_input(file, target, remove)
    if not quiet and target is not None:
        click.echo(f"{file}: {size} bytes -> {target}", err=True)
    if verbose:
        _report_workers(cluster)


@main.command("test")
@click.argument("files", nargs=-1, required=True)
@click.option("-m", "--model", default=None, help="Model to use (default: the one the archive names).")
@_verbosity
def test_command(files, model, quiet, verbose, debug):
    """Decode FILES and verify every checksum; write nothing."""
    for file in files:
        with open_input(file) as stream:
            archive = container.ArchiveReader(stream)
            compressor = _decoder(archive.header, model, Options(), verbose)
            size = archive.header.original_size
            with notices.bar(size, "test") as bar:
                for _ in compressor.iter_decompress(archive, bar.update):
                    pass
        if not quiet:
            click.echo(f"{file}: OK ({size} bytes)", err=True)


@main.command()
@click.argument("files", nargs=-1, required=True)
@_verbosity
def info(files, quiet, verbose, debug):
    """Show what an archive holds: sizes, ratio, model, chunks, header bytes."""
    for file in files:
        with open_input(file) as stream:
            archive = container.ArchiveReader(stream)
            if not stream.seekable():  # a file's payloads were verified on opening, a pipe's were not
                archive.verify_payloads()
        h, size = archive.header, archive.archive_size
        raw = sum(c.raw for c in h.chunks)
        bpb = 8 * size / h.original_size if h.original_size else 0.0
        choice = h.extensions.get(container.MODEL_CHOICE_EXTENSION)
        rows = [
            ("file", file),
            ("original size", f"{h.original_size} bytes"),
            ("archive size", f"{size} bytes ({bpb:.4f} bits/byte)"),
            ("header", f"{archive.header_size} bytes (format v{container.FORMAT_VERSION})"),
            ("model", f"{h.model_name} (fingerprint {h.model_fingerprint.hex()})"),
            *([("model choice", ModelChoice.from_bytes(h.model_name, choice).describe())] if choice else []),
            ("level", _describe_level(h)),
            ("chunks", f"{len(h.chunks)} of up to {h.chunk_size} tokens, {raw} stored raw, "
                       f"{sum(c.tokens for c in h.chunks)} tokens coded"),
            ("predictor", f"{h.step}, " + (f"{h.precision}, machine-bound: opens only where these floats are "
                          "reproduced (same CPU kind, torch, batch and threads)" if h.machine_bound else
                          "exact: opens on any machine, threads or device, "
                          + ("in its encoder's batches (side models, learning)" if h.side_models or h.learning_version
                             else "in any batch"))),
            ("encoded with", f"batch {h.batch_size}, {h.threads} threads, torch {h.torch_version}, "
                             f"CPU capability {h.cpu_capability}"),
            ("steering", _describe_steering(h, size)),
            ("checksum", f"sha256[:8] {h.checksum.hex()}"),
        ]  # fmt: skip
        for key, value in rows:
            click.echo(f"{key:>14}: {value}")


def _describe_level(h: Header) -> str:
    """The level asked for (where the archive says), the window the chunks were coded with and
    whether side models coded along."""
    sees = "each token sees its whole chunk" if h.window is None else f"window {h.window} tokens"
    if h.side_models:
        sees += f", side models v{h.side_models_version}"
    if h.learning_version:
        sees += f", weights learning as they code v{h.learning_version}"
    if (level := h.extensions.get(container.LEVEL_EXTENSION)) is None:
        return sees
    return f"{container.Reader(level).varint()}, {sees}"


def _describe_steering(h: Header, archive_bytes: int) -> str:
    """Variant, prior, header bits, bits per coordinate and the net gain where it was measured."""
    payload = h.extensions.get(container.STEERING_EXTENSION, b"")
    steer = Steering.from_bytes(payload)
    text = f"{steer.describe()}, {8 * len(payload)} header bits"
    if steer.coded is not None:
        prior = hyperprior.PRIORS[steer.coded.data[0]]
        text += f", prior {prior}, {steer.coded.bits / steer.coded.values.size:.2f} bits/coordinate"
    if (unsteered := h.extensions.get(container.UNSTEERED_SIZE_EXTENSION)) is not None:
        size = container.Reader(unsteered).varint()
        text += f", net gain {size - archive_bytes} bytes vs none ({size} bytes)"
    elif steer.kind != "none":
        text += ", net gain not measured (--steer auto measures it)"
    return text


@main.command()
@click.argument("names", nargs=-1, metavar="[MODEL]...")
@_verbosity
def prepare(names, quiet, verbose, debug):
    """Do now the first run's work for MODELs (default: those `--model auto` chooses among): fetch
    each, prepare its exact weights, and build the kernels for this CPU."""
    from ..compressor import Compressor
    from ..exact import arithmetic

    kernels = arithmetic.kernels()
    for name in names or CANDIDATES:
        Compressor(name).prepare()
        notices.say(f"{name}: ready" + ("" if kernels else " (on the torch reference path: no kernels)"))


@main.command()
def models() -> None:
    """List the built-in model aliases and whether each is cached."""
    click.echo(f"{AUTO} (default): per input, the model among {', '.join(CANDIDATES)} that a probe of it picks")
    for alias in ALIASES.values():
        path = alias_path(alias)
        state = f"cached at {path}" if path.exists() else "not cached (fetched on first use)"
        click.echo(f"{alias.name}: {alias.description}; {state}")
