"""Files for the command line, as gzip/xz/zstd handle them: input from a file or standard input,
outputs planned before any work (never over the input, never over a file without -f), and
written atomically: complete under their name, or not there at all."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import BinaryIO

from ..errors import LlmzipError

TEMP_TAG = ".llmzip-"  # output is written to .NAME.llmzip-PID.tmp, then renamed to NAME
JOURNAL_SUFFIX = ".llmzip-journal"  # NAME.llmzip-journal: finished batches while NAME is made (journal.py)


@contextmanager
def open_input(file: str) -> Iterator[BinaryIO]:
    """FILE, or standard input for `-`, as a binary stream (read as it is needed, never whole)."""
    if file == "-":
        yield sys.stdin.buffer
        return
    if os.path.isdir(file):
        raise LlmzipError(f"{file}: is a directory")
    with open(file, "rb") as f:
        yield f


@contextmanager
def spooled(stream: BinaryIO) -> Iterator[BinaryIO]:
    """A seekable copy of a pipe's bytes, in a temporary file that is gone when closed."""
    with tempfile.TemporaryFile() as copy:
        shutil.copyfileobj(stream, copy, 1 << 20)
        copy.seek(0)
        yield copy


def stream_size(stream: BinaryIO) -> int | None:
    """Bytes in a regular file (for progress), None for a pipe or terminal."""
    try:
        info = os.fstat(stream.fileno())
    except OSError:  # an in-memory stream (tests)
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def plan_output(file: str, output: str | None, to_stdout: bool, default: Callable[[str], str]) -> str | None:
    """Where to write (None: standard output), refusing before any work what would fail later."""
    if file != "-" and not os.path.exists(file):
        raise LlmzipError(f"{file}: no such file")
    if os.path.isdir(file):
        raise LlmzipError(f"{file}: is a directory")
    if to_stdout or (file == "-" and output is None):
        return None
    target = output or default(file)
    if file != "-" and os.path.exists(target) and os.path.samefile(file, target):
        raise LlmzipError(f"{target}: output would overwrite the input")
    return target


def check_overwrite(target: str | None, force: bool) -> None:
    if target is not None and os.path.exists(target) and not force:
        raise LlmzipError(f"{target} already exists; use -f to overwrite")


def write_atomically(target: str | None, blocks: Iterable[bytes], mode: int | None = None) -> None:
    """Write blocks to a temp file beside `target` and rename it into place only when all were
    written; on any error or interrupt the temp file is removed. None writes to stdout.

    A process killed outright (SIGKILL, power loss) cannot remove its temp file, so the name
    carries the writer's pid, and the next write of the same target removes those of dead pids."""
    if target is None:
        for block in blocks:
            sys.stdout.buffer.write(block)
        sys.stdout.buffer.flush()
        return
    folder, name = os.path.split(os.path.abspath(target))
    _remove_stale_temps(folder, name)
    tmp = os.path.join(folder, f".{name}{TEMP_TAG}{os.getpid()}.tmp")
    try:  # opened inside the try, so an interrupt just after creating the file still removes it
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            for block in blocks:
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as e:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
            raise LlmzipError(f"cannot write {target}: {e.strerror}") from e
        raise


def _remove_stale_temps(folder: str, name: str) -> None:
    prefix = f".{name}{TEMP_TAG}"
    for entry in os.listdir(folder):
        pid = entry[len(prefix) : -len(".tmp")]
        if entry.startswith(prefix) and entry.endswith(".tmp") and pid.isdigit() and not _alive(int(pid)):
            with suppress(FileNotFoundError):  # another llmzip may be removing it too
                os.unlink(os.path.join(folder, entry))


def _alive(pid: int) -> bool:
    """Whether a process other than this one has this pid."""
    if pid == os.getpid():  # a temp file with our pid that we did not make: an earlier process's
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def journal_path(target: str | None) -> str | None:
    """Where finished batches are kept while `target` is made; None for standard output."""
    return None if target is None else target + JOURNAL_SUFFIX


@contextmanager
def resumable(journal: str | None) -> Iterator[None]:
    """Remove the journal once the output is in place; where the work stops short, say that the
    same command resumes from it."""
    try:
        yield
    except BaseException:  # Ctrl-C, SIGTERM (SystemExit), a full disk, ...
        if journal is not None and os.path.exists(journal):
            print(f"llmzip: finished batches kept in {journal}; the same command resumes from it", file=sys.stderr)
        raise
    if journal is not None:
        with suppress(FileNotFoundError):
            os.unlink(journal)


def remove_input(file: str, target: str | None, remove: bool) -> None:
    if remove and file != "-" and target is not None:
        os.unlink(file)


def input_mode(file: str) -> int | None:
    return None if file == "-" else stat.S_IMODE(os.stat(file).st_mode)
