"""Container format v1 (docs/FORMAT.md): header, chunk table, payloads.

Every length in the header is checked against the bytes actually present before it is used,
and every byte of the archive is covered by a CRC32, so damage is reported, never decoded.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from .errors import CorruptArchiveError, TruncatedArchiveError, UnsupportedVersionError
from .predictor import MIN_ROWS
from .tokenization import N_ESCAPES, TokenRoles

MAGIC = b"LLMZ"
FORMAT_VERSION = 1
PREAMBLE = len(MAGIC) + 1 + 4  # magic, version byte, header length
CHECKSUM_BYTES = 8
# Sanity limits for header values, so that damage cannot ask for huge loops or allocations.
MAX_CHUNK_TOKENS = 1 << 20
MAX_ROWS = 4096
MAX_THREADS = 1024
MAX_VOCAB = 1 << 24
# Extension tags below this must be understood by a reader; tags from it on may be skipped.
FIRST_OPTIONAL_EXTENSION = 128
STEERING_EXTENSION = 1  # the steering prefix (steering.Steering.to_bytes); absent: none
UNSTEERED_SIZE_EXTENSION = 128  # bytes the archive had without steering, when the encoder measured it


@dataclass(frozen=True)
class ChunkEntry:
    tokens: int  # coded tokens; 0 means the chunk is stored raw
    stored_size: int  # bytes of this chunk in the payload area
    crc32: int  # CRC32 of the chunk's original bytes

    @property
    def raw(self) -> bool:
        return self.tokens == 0


@dataclass
class Header:
    model_name: str
    model_fingerprint: bytes
    roles: TokenRoles
    chunk_size: int  # tokens per chunk (the last one may be shorter)
    batch_size: int  # chunks coded together; batch k holds chunks [k*batch_size, (k+1)*batch_size)
    rows: int  # rows the model ran per step (>= batch_size, padded with idle rows)
    threads: int
    precision: str  # predictor.PRECISIONS key
    step: str  # the forward implementation, predictor.step_name()
    torch_version: str
    cpu_capability: str
    original_size: int
    checksum: bytes  # first CHECKSUM_BYTES of the SHA-256 of the original
    chunks: list[ChunkEntry]
    extensions: dict[int, bytes] = field(default_factory=dict)

    @property
    def alphabet_size(self) -> int:
        return self.roles.model_vocab + N_ESCAPES


# -- encoding -------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """LEB128: 7 bits a byte, low bits first."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string_bytes(s: str) -> bytes:
    data = s.encode("utf-8")
    return varint(len(data)) + data


def pack(header: Header, payloads: list[bytes]) -> bytes:
    """The archive bytes for `header` (whose chunk table describes `payloads`) and payloads."""
    ext = b"".join(varint(tag) + varint(len(v)) + v for tag, v in sorted(header.extensions.items()))
    table = b"".join(varint(c.tokens) + varint(c.stored_size) + c.crc32.to_bytes(4, "little") for c in header.chunks)
    body = b"".join(
        [
            string_bytes(header.model_name),
            header.model_fingerprint,
            varint(header.roles.model_vocab),
            varint(header.roles.start_id),
            varint(header.roles.escape_input_id),
            varint(header.chunk_size),
            varint(header.batch_size),
            varint(header.rows),
            varint(header.threads),
            string_bytes(header.precision),
            string_bytes(header.step),
            string_bytes(header.torch_version),
            string_bytes(header.cpu_capability),
            varint(header.original_size),
            header.checksum,
            varint(len(ext)),
            ext,
            varint(len(header.chunks)),
            table,
            zlib.crc32(b"".join(payloads)).to_bytes(4, "little"),
        ]
    )
    head = MAGIC + bytes([FORMAT_VERSION]) + len(body).to_bytes(4, "little") + body
    return head + zlib.crc32(head).to_bytes(4, "little") + b"".join(payloads)


# -- decoding -------------------------------------------------------------------------------


class Reader:
    """Reads header fields from a buffer, never past its end (damage raises CorruptArchiveError)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CorruptArchiveError("header field runs past the end of the header")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def varint(self, limit: int = 1 << 63) -> int:
        n = shift = 0
        for _ in range(10):
            byte = self.take(1)[0]
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if n > limit:
                    raise CorruptArchiveError(f"header value {n} exceeds the limit {limit}")
                return n
        raise CorruptArchiveError("malformed varint in header")

    def string(self) -> str:
        try:
            return self.take(self.varint(len(self.data))).decode("utf-8")
        except UnicodeDecodeError as e:
            raise CorruptArchiveError("header string is not UTF-8") from e

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def f32(self) -> float:
        return struct.unpack("<f", self.take(4))[0]

    def at_end(self) -> bool:
        return self.pos == len(self.data)


def unpack(archive: bytes) -> tuple[Header, list[bytes]]:
    """Parse and verify an archive; return its header and the chunk payloads."""
    if len(archive) < PREAMBLE:
        if archive == MAGIC[: len(archive)] and archive:
            raise TruncatedArchiveError("archive is truncated inside its preamble")
        raise CorruptArchiveError("not an llmzip archive (too short)")
    if archive[:4] != MAGIC:
        raise CorruptArchiveError("not an llmzip archive (bad magic bytes)")
    version = archive[4]
    if version != FORMAT_VERSION:
        newer = " is newer than this llmzip; upgrade llmzip" if version > FORMAT_VERSION else " is unknown"
        raise UnsupportedVersionError(f"archive format version {version}{newer} (this llmzip reads version 1)")
    body_size = int.from_bytes(archive[5:9], "little")
    payload_start = PREAMBLE + body_size + 4
    if payload_start > len(archive):
        raise TruncatedArchiveError(
            f"archive is truncated: its header needs {payload_start} bytes, it has {len(archive)}"
        )
    stored_crc = int.from_bytes(archive[payload_start - 4 : payload_start], "little")
    if zlib.crc32(archive[: payload_start - 4]) != stored_crc:
        raise CorruptArchiveError("header checksum mismatch: the archive header is damaged")
    header, payload_crc = _parse_body(Reader(archive[PREAMBLE : payload_start - 4]))
    _check_header(header)

    payload_area = archive[payload_start:]
    expected = sum(c.stored_size for c in header.chunks)
    if len(payload_area) < expected:
        raise TruncatedArchiveError(f"archive is truncated: {expected - len(payload_area)} payload bytes missing")
    if len(payload_area) > expected:
        raise CorruptArchiveError(f"{len(payload_area) - expected} unexpected bytes after the last chunk")
    if zlib.crc32(payload_area) != payload_crc:
        raise CorruptArchiveError("payload checksum mismatch: the compressed data is damaged")
    payloads, offset = [], 0
    for c in header.chunks:
        payloads.append(payload_area[offset : offset + c.stored_size])
        offset += c.stored_size
    return header, payloads


def _parse_body(r: Reader) -> tuple[Header, int]:
    model_name = r.string()
    fingerprint = r.take(8)
    roles = TokenRoles(r.varint(MAX_VOCAB), r.varint(MAX_VOCAB), r.varint(MAX_VOCAB))
    chunk_size, batch_size = r.varint(MAX_CHUNK_TOKENS), r.varint(MAX_ROWS)
    rows, threads = r.varint(MAX_ROWS), r.varint(MAX_THREADS)
    precision, step, torch_version, cpu_capability = r.string(), r.string(), r.string(), r.string()
    original_size, checksum = r.varint(), r.take(CHECKSUM_BYTES)
    ext_reader = Reader(r.take(r.varint(len(r.data))))
    extensions = {}
    while not ext_reader.at_end():
        tag = ext_reader.varint()
        extensions[tag] = ext_reader.take(ext_reader.varint(len(ext_reader.data)))
    n_chunks = r.varint(len(r.data))  # each entry takes at least 6 bytes, so this bounds the loop
    chunks = [ChunkEntry(r.varint(MAX_CHUNK_TOKENS), r.varint(), r.u32()) for _ in range(n_chunks)]
    payload_crc = r.u32()
    if not r.at_end():
        raise CorruptArchiveError("header has unexpected trailing bytes")
    header = Header(
        model_name, fingerprint, roles, chunk_size, batch_size, rows, threads, precision, step,
        torch_version, cpu_capability, original_size, checksum, chunks, extensions,
    )  # fmt: skip
    return header, payload_crc


def _check_header(h: Header) -> None:
    """Reject values no encoder writes, so later code can trust them."""
    problems = []
    if min(h.batch_size, h.threads, h.chunk_size) < 1:
        problems.append("bad coding geometry")
    elif h.chunks and (h.batch_size > len(h.chunks) or h.rows != max(MIN_ROWS, h.batch_size)):
        problems.append("bad coding geometry")  # encoders run max(4, batch) rows, batch <= chunks
    if max(h.roles.start_id, h.roles.escape_input_id) >= h.roles.model_vocab:
        problems.append("special token id outside the vocabulary")
    if any(c.tokens > h.chunk_size or (c.raw and c.stored_size == 0) for c in h.chunks):
        problems.append("bad chunk table entry")
    raw_bytes = sum(c.stored_size for c in h.chunks if c.raw)
    if raw_bytes > h.original_size:
        problems.append("raw chunks larger than the original")
    elif sum(c.tokens for c in h.chunks) > h.original_size - raw_bytes:  # every coded symbol is >= 1 byte
        problems.append("more coded tokens than original bytes")
    if bool(h.original_size) != bool(h.chunks):
        problems.append("chunk table does not match the original size")
    if problems:
        raise CorruptArchiveError("invalid header: " + ", ".join(problems))
