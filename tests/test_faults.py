"""Interrupted or failing writes leave no output file, remove their temp file, never touch the input;
an interrupted job keeps its finished batches in a journal, from which the same command resumes."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmzip import Compressor, LlmzipError
from llmzip.cli.files import JOURNAL_SUFFIX, TEMP_TAG, write_atomically

LLMZIP = [sys.executable, "-m", "llmzip"]


def temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if TEMP_TAG in p.name and p.name.endswith(".tmp")]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


pytestmark = pytest.mark.slow
# Decoding `big` in batches of 4 chunks takes the tiny model half a minute: long enough to be
# interrupted mid-write; FAST decodes it in seconds, where a test needs it decoded.
SLOW = ["--batch-size", "4", "--threads", "1"]
FAST = ["--batch-size", "64"]


@pytest.fixture(scope="module")
def big(tiny_dir, tmp_path_factory) -> tuple[Path, Path]:
    """An input of 80 KB and its archive in chunks of 64 tokens at level 1 (no side models, so
    decoders choose their batches)."""
    folder = tmp_path_factory.mktemp("big")
    source = folder / "big.txt"
    source.write_bytes(b"".join(b"line %d of the rain and the sun\n" % i for i in range(2500)))
    archive = folder / "big.txt.lz"
    archive.write_bytes(Compressor(tiny_dir, level=1, chunk_size=64).compress(source.read_bytes()))
    return source, archive


def interruptible(args: list[str], **kwargs) -> subprocess.Popen:
    """Start a command with SIGINT at its default: a shell's background jobs inherit it ignored,
    and Python (like gzip) leaves an ignored SIGINT ignored."""
    return subprocess.Popen(args, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def start_and_wait_for_temp(args: list[str], folder: Path) -> subprocess.Popen:
    """Start llmzip and return once its temp output file exists (it is then writing)."""
    proc = interruptible(args, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not temps(folder):
        assert proc.poll() is None, f"llmzip ended before writing: {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, "no temp file appeared"
        time.sleep(0.02)
    return proc


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_a_signal_mid_write_leaves_no_output_and_no_temp(big, tmp_path, signum, code):
    _, archive = big
    before = digest(archive)
    out = tmp_path / "out.txt"
    proc = start_and_wait_for_temp([*LLMZIP, "decompress", str(archive), "-o", str(out), "-q", *SLOW], tmp_path)
    proc.send_signal(signum)
    assert proc.wait(60) == code
    kept = f"llmzip: finished batches kept in {out}{JOURNAL_SUFFIX}"
    for line in proc.stderr.read().decode().splitlines():  # click writes an empty line on Ctrl-C
        assert line in ("", "llmzip: interrupted") or line.startswith(kept)
    assert not out.exists() and temps(tmp_path) == []
    assert digest(archive) == before


def test_a_killed_decompress_resumes_from_its_journal_and_clears_its_temp(big, tmp_path):
    """SIGKILL runs no handler: the temp file stays behind, and the journal holds every batch
    finished; the same command then decodes only the rest, and leaves neither behind."""
    source, archive = big
    out = tmp_path / "out.txt"
    journal = tmp_path / f"out.txt{JOURNAL_SUFFIX}"
    args = [*LLMZIP, "decompress", str(archive), "-o", str(out), "--batch-size", "8", "--threads", "1"]
    proc = interruptible(args, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not journal.exists() or journal.stat().st_size < source.stat().st_size // 2:
        assert proc.poll() is None and time.monotonic() < deadline, "no journal filled half the output"
        time.sleep(0.05)
    proc.kill()
    proc.wait(60)
    assert not out.exists() and len(temps(tmp_path)) == 1
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    assert f"llmzip: resuming from {journal}: " in done.stderr
    assert out.read_bytes() == source.read_bytes() and temps(tmp_path) == [] and not journal.exists()


# llmzip's CLI, with a flag file touched when coding starts, so a test can interrupt it mid-coding.
CODING_FLAG_CLI = """
import sys, llmzip.batches as b
flag, encode = sys.argv.pop(1), b.BatchCoder.encode
def flagged(*args, **kwargs):
    open(flag, "w").close()
    return encode(*args, **kwargs)
b.BatchCoder.encode = flagged
from llmzip.cli import main
main()
"""


def test_an_interrupted_compress_keeps_its_batches_and_resumes_to_the_same_archive(big, tiny_dir, tmp_path):
    source, _ = big
    before = digest(source)
    out, flag = tmp_path / "out.lz", tmp_path / "coding"
    journal = tmp_path / f"out.lz{JOURNAL_SUFFIX}"
    options = ["--model", tiny_dir, "-1", "--chunk-size", "64", "--batch-size", "4", "--threads", "1"]
    args = ["compress", str(source), "-o", str(out), *options]
    proc = interruptible([sys.executable, "-c", CODING_FLAG_CLI, str(flag), *args], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not journal.exists() or journal.stat().st_size < 10_000:  # some batches finished
        assert proc.poll() is None and time.monotonic() < deadline, "compress kept no batches"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    stderr = proc.stderr.read().decode()
    assert f"llmzip: finished batches kept in {journal}; the same command resumes from it" in stderr
    assert not out.exists() and temps(tmp_path) == [] and digest(source) == before
    done = subprocess.run([*LLMZIP, *args], capture_output=True, text=True, check=True)
    assert f"llmzip: resuming from {journal}: " in done.stderr
    uninterrupted = Compressor(tiny_dir, level=1, chunk_size=64, batch_size=4, threads=1).compress(source.read_bytes())
    assert out.read_bytes() == uninterrupted and not journal.exists() and temps(tmp_path) == []


def test_coding_runs_no_python_inside_constriction():
    """Ctrl-C reaches Python code only: the first array constriction sees runs NumPy's version
    check from Rust, where one became a Rust panic (CI, stop 27); coding runs it first, from Python."""
    code = """
import sys, numpy as np, llmzip.coding as c
c._load_numpy_api()  # what encode_batch and decode_batch do first
symbols, probs, called = np.zeros(3, np.int32), np.full((3, 4), 0.25), []
sys.setprofile(lambda frame, event, arg: event == "call" and called.append(frame.f_code.co_name))
c.constriction.stream.queue.RangeEncoder().encode(symbols, c.CODER_MODEL, probs)
sys.setprofile(None)
print(called)
"""
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_a_failing_write_removes_the_temp_file(tmp_path):
    def blocks():
        yield b"some data"
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(LlmzipError, match=r"cannot write .*out: No space left on device"):
        write_atomically(str(tmp_path / "out"), blocks())
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KB tmpfs (needs root, as in CI); skipped where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_a_one_line_error_and_leaves_nothing(big, full_disk):
    _, archive = big
    out = full_disk / "out.txt"
    done = subprocess.run(
        [*LLMZIP, "decompress", str(archive), "-o", str(out), "-q", *FAST], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert done.stderr == f"llmzip: error: cannot write {out}: No space left on device\n"
    assert os.listdir(full_disk) == []
