"""A journal of finished batches kept beside an output while it is made, so that a compress or
decompress cut off (Ctrl-C, SIGKILL, a reboot) and run again codes only the batches it lacks.

The file starts with the job it belongs to (what is coded, with which model, by which llmzip);
each record is one batch's result under a tag naming everything the result depends on (the job,
the plan, the batch's place and contents), appended and synced when the batch finishes, and
covered by a CRC. A journal of another job is set aside whole, a record cut off or damaged is
dropped, and a record is only ever reused for its exact tag: never wrong output, at worst work
done again."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import suppress

from . import __version__, notices
from .errors import LlmzipError

MAGIC = b"LLMZJ\x01"
TAG = 32  # sha256
_RECORD = struct.Struct("<32sQ")  # tag, body length; then the body and the CRC32 of all three
Record = tuple[list[bytes | None], float]  # a batch's pieces (None: a chunk stored raw) and its ideal bits


def digest(*parts: bytes | str) -> bytes:
    """A tag or job: the sha256 of `parts` (strings as UTF-8), each length-prefixed."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little") + data)
    return h.digest()


def job_of(kind: str, fingerprint: bytes, identity: bytes) -> bytes:
    """A job: compress or decompress, the model, what is coded (the input's or archive's digest)
    and this llmzip's version (another version may code the same batch to other bytes)."""
    return digest(kind, __version__, fingerprint, identity)


class Journal:
    """The journal at `path` for `job`: the records held there if it is this job's, else a new one."""

    def __init__(self, path: str, job: bytes) -> None:
        self.path, self.job = path, job
        self.held: dict[bytes, tuple[int, int]] = {}  # tag -> (offset, length) of its body
        good = self._read() if os.path.exists(path) else 0
        # readable by its owner only, as the temp output beside it: it holds the data
        self.file = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+b")
        if not good:
            self.file.truncate(0)
            self.file.write(MAGIC + job)
            good = len(MAGIC) + len(job)
        self.file.truncate(good)  # a record cut off mid-write
        self.file.seek(good)
        self._sync()

    @classmethod
    def open(cls, path: str | None, job: bytes, batches: int) -> Journal | None:
        """The journal of a job of `batches` batches, or None where there is none to keep (no
        path, one batch) or it cannot be kept (said once): coding goes on without it."""
        if path is None or batches < 2:
            return None
        try:
            return cls(path, job)
        except OSError as e:
            notices.warn(f"cannot keep a journal in {path} ({e.strerror}): an interruption would lose the work")
            return None

    def tag(self, *parts: bytes | str) -> bytes:
        """A record's tag: what its batch's result depends on besides the job."""
        return digest(self.job, *parts)

    def _read(self) -> int:
        """Index the records of this job's journal; the offset where its valid records end (0: none)."""
        with open(self.path, "rb") as f:
            if f.read(len(MAGIC) + TAG) != MAGIC + self.job:
                notices.say(f"{self.path}: a journal of another input, model or llmzip version; starting over")
                return 0
            end = f.tell()
            while head := f.read(_RECORD.size):
                tag, length = _RECORD.unpack(head) if len(head) == _RECORD.size else (b"", -1)
                body = f.read(length) if length >= 0 else b""
                if length < 0 or len(body) < length or f.read(4) != zlib.crc32(head + body).to_bytes(4, "little"):
                    notices.say(f"{self.path}: dropping a damaged or unfinished record and what follows it")
                    break
                self.held[tag] = (end + _RECORD.size, length)
                end = f.tell()
            return end

    def get(self, tag: bytes) -> Record:
        """The record held under `tag`, its CRC checked again."""
        offset, length = self.held[tag]
        self.file.seek(offset - _RECORD.size)
        data = self.file.read(_RECORD.size + length + 4)
        self.file.seek(0, os.SEEK_END)
        if data[-4:] != zlib.crc32(data[:-4]).to_bytes(4, "little"):
            raise LlmzipError(f"{self.path} changed while in use; remove it and run again")
        return _unpack(data[_RECORD.size : -4])

    def put(self, tag: bytes, record: Record) -> None:
        """Append a record and sync it; where that fails (a full disk), go on without a journal."""
        if self.file.closed:
            return
        body = _pack(record)
        head = _RECORD.pack(tag, len(body))
        try:
            self.file.write(head + body + zlib.crc32(head + body).to_bytes(4, "little"))
            self._sync()
        except OSError as e:
            notices.warn(f"cannot keep a journal in {self.path} ({e.strerror}): an interruption now loses the work")
            self.remove()
            return
        self.held[tag] = (self.file.tell() - 4 - len(body), len(body))

    def _sync(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()

    def remove(self) -> None:
        with suppress(OSError):  # closing flushes, which may fail on the same full disk
            self.close()
        with suppress(FileNotFoundError):
            os.unlink(self.path)


def replay(
    journal: Journal | None,
    tags: list[bytes],
    run: Callable[[list[int]], Iterator[Record]],
    on_reused: Callable[[int, Record], None] = lambda k, record: None,
) -> Iterator[Record]:
    """Each batch's record in order: the journal's where it holds the batch's tag (passed to
    `on_reused` too), else the next of `run(indices of the batches it lacks)`, put into the
    journal as it comes."""
    held = {k for k, tag in enumerate(tags) if journal is not None and tag in journal.held}
    if held:
        notices.say(f"resuming from {journal.path}: {len(held)} of {len(tags)} batches already coded")
    fresh = run([k for k in range(len(tags)) if k not in held])
    for k, tag in enumerate(tags):
        if journal is not None and k in held:
            record = journal.get(tag)
            on_reused(k, record)
            yield record
            continue
        record = next(fresh)
        if journal is not None:
            journal.put(tag, record)
        yield record


def _pack(record: Record) -> bytes:
    pieces, bits = record
    out = [struct.pack("<dQ", bits, len(pieces))]
    for piece in pieces:
        out.append(struct.pack("<q", -1 if piece is None else len(piece)))
        out.append(piece or b"")
    return b"".join(out)


def _unpack(body: bytes) -> Record:
    bits, count = struct.unpack_from("<dQ", body)
    pos, pieces = 16, []
    for _ in range(count):
        (length,) = struct.unpack_from("<q", body, pos)
        pos += 8
        pieces.append(None if length < 0 else body[pos : pos + length])
        pos += max(length, 0)
    return pieces, bits
