"""What every benchmark shares: the machine description, inputs, baselines, result files, tables."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import llmzip

llmzip.tune_process()  # as the command line runs, before torch is imported

from llmzip.compressor import Compressor, cpu_capability  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CORPUS = Path(os.environ.get("LLMZIP_CORPUS", Path(__file__).parent.parent.parent / "shared" / "corpus"))


def machine() -> dict[str, object]:
    """What the figures depend on: CPU model and count, torch and its kernel level."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    import torch

    return {
        "cpu": cpu or platform.processor(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_capability": cpu_capability(),
        "commit": _commit(),
    }


def machine_tag(machine: dict[str, object]) -> str:
    """The CPU in a result file's name, e.g. `amd-avx2` or `intel-avx512-bf16-amx`: speeds of
    different machines sit in different files, and compare only within one."""
    vendor = next((v for v in ("intel", "amd") if v in str(machine["cpu"]).lower()), platform.machine())
    return "-".join([vendor, *str(machine["cpu_capability"]).lower().split("+")])


def _commit() -> str:
    """The llmzip commit measured (with `+` when the code has changes: new results, such as the
    file written just before by the same run, do not count), or "" outside git."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=RESULTS.parent, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":(top,exclude)benchmarks/results")
    return commit + "+" * bool(commit and changes)


def load_input(spec: str, nbytes: int | None = None) -> tuple[str, bytes]:
    """(name, bytes) of a benchmark input: a path, a file of the corpus folder ($LLMZIP_CORPUS, by
    default ../shared/corpus beside the repository), or a Hugging Face dataset id (its `text`
    column joined by newlines, e.g. `LTCB/enwik8` where the network allows).

    Files are read as bytes rather than through `datasets`' text loader, which decodes UTF-8 and
    translates line endings, so that what is measured is the file itself."""
    for path in (Path(spec), CORPUS / spec):
        if path.is_file():
            with path.open("rb") as f:
                return path.name, f.read(nbytes) if nbytes else f.read()
    if "/" not in spec or Path(spec).exists():
        raise SystemExit(f"{spec}: no such file here or in {CORPUS} (set LLMZIP_CORPUS), and not a dataset id")
    import datasets  # only for inputs that are not local files

    try:
        rows = datasets.load_dataset(spec, split="train")
    except Exception as e:
        raise SystemExit(f"{spec}: not a file, not in {CORPUS}, and not a loadable dataset ({e})") from e
    data = "\n".join(rows["text"]).encode("utf-8")
    return spec.rsplit("/", 1)[-1], data[:nbytes] if nbytes else data


# The classical compressors at their strongest settings, through Python's bindings.
def _brotli(data: bytes) -> bytes:
    import brotli

    return brotli.compress(data, quality=11)


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=19).compress(data)


BASELINES: dict[str, Callable[[bytes], bytes]] = {
    "gzip -9": lambda data: gzip.compress(data, compresslevel=9, mtime=0),
    "bzip2 -9": lambda data: bz2.compress(data, compresslevel=9),
    "xz -9e": lambda data: lzma.compress(data, preset=9 | lzma.PRESET_EXTREME),
    "zstd -19": _zstd,
    "brotli -11": _brotli,
}


def baselines(data: bytes) -> dict[str, dict[str, float]]:
    """Bits per byte and compress bytes/s of each classical compressor on `data`."""
    out = {}
    for name, compress in BASELINES.items():
        started = time.perf_counter()
        size = len(compress(data))
        seconds = time.perf_counter() - started
        out[name] = {"bits_per_byte": round(8 * size / len(data), 4), "bytes_per_s": round(len(data) / seconds)}
    return out


def round_trip(compressor: Compressor, data: bytes, verify: bool = True) -> dict[str, object]:
    """Compress and (unless not `verify`) decompress `data` with the model loaded: size, bytes/s
    both ways, exactness (None where not decoded)."""
    started = time.perf_counter()
    archive = compressor.compress(data)
    compress_s = time.perf_counter() - started
    exact, decompress_bytes_per_s = None, None
    if verify:
        started = time.perf_counter()
        exact = compressor.decompress(archive) == data
        decompress_bytes_per_s = round(len(data) / (time.perf_counter() - started))
    return {
        "archive_bytes": len(archive),
        "bits_per_byte": round(8 * len(archive) / len(data), 4),
        "compress_bytes_per_s": round(len(data) / compress_s),
        "decompress_bytes_per_s": decompress_bytes_per_s,
        "chunks": compressor.stats.chunks,
        "exact": exact,
    }


def command_line() -> str:
    """This benchmark's command, as run from the repository root."""
    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def save(name: str, report: dict) -> Path:
    """Write `report` (with the command that made it) to benchmarks/results/NAME."""
    report = {"command": command_line()} | report
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
