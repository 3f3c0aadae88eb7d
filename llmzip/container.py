"""Container format v2 (docs/FORMAT.md): header, chunk table, payloads.

Every length in the header is checked against the bytes actually present before it is used,
and every byte of the archive is covered by a CRC32, so damage is reported, never passed off as
data. Archives are read from streams, payloads batch by batch, so memory does not grow with them.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from .errors import CorruptArchiveError, TruncatedArchiveError, UnsupportedVersionError
from .tokenization import N_ESCAPES, TokenRoles

MAGIC = b"LLMZ"
FORMAT_VERSION = 2
READERS = {1: "llmzip 0.1"}  # older format versions and the llmzip that reads them
PREAMBLE = len(MAGIC) + 1 + 4  # magic, version byte, header length
CHECKSUM_BYTES = 8
# Sanity limits for header values, so that damage cannot ask for huge loops or allocations.
MAX_CHUNK_TOKENS = 1 << 20
MAX_ROWS = 4096
MAX_THREADS = 1024
MAX_VOCAB = 1 << 24
EXACT = "exact"  # the precision of the exact predictor (predictor.py), whose archives open anywhere
FLOAT_PRECISIONS = ("fp32", "bf16", "int8")  # a Hugging Face forward's: machine-bound archives
PRECISIONS = (EXACT, *FLOAT_PRECISIONS)
# With 1 or 2-3 rows torch picks other float kernels, whose row results depend on the batch size
# and thread count; from 4 rows on each row's result is independent of the others (shared/FACTS.md).
MIN_ROWS = 4
READ_PIECE = 1 << 20  # bytes per read of a length the header gives
# Extension tags below this must be understood by a reader; tags from it on may be skipped.
FIRST_OPTIONAL_EXTENSION = 128
STEERING_EXTENSION = 1  # the steering prefix (steering.Steering.to_bytes); absent: none
WINDOW_EXTENSION = 2  # varint: tokens each token attends besides the first (exact models); absent: its whole chunk
SIDE_EXTENSION = 3  # varint: the side models' version (versions.SIDE_MODELS); absent: none
LEARNING_EXTENSION = 4  # varint: the weights learned as they coded, learning.VERSION; absent: they did not
UNSTEERED_SIZE_EXTENSION = 128  # bytes the archive had without steering, when the encoder measured it
LEVEL_EXTENSION = 129  # the compression level asked for (levels.LEVELS), for `info`
MODEL_CHOICE_EXTENSION = 130  # why `--model auto` chose the model (model_choice.ModelChoice), for `info`


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
    # The encoder's geometry: binding for a machine-bound archive, information for an exact one.
    batch_size: int  # chunks coded together; batch k holds chunks [k*batch_size, (k+1)*batch_size)
    threads: int
    precision: str  # EXACT or one of FLOAT_PRECISIONS
    step: str  # the forward implementation, predictor.forward_name()
    torch_version: str
    cpu_capability: str
    original_size: int
    checksum: bytes  # first CHECKSUM_BYTES of the SHA-256 of the original
    chunks: list[ChunkEntry]
    extensions: dict[int, bytes] = field(default_factory=dict)

    @property
    def alphabet_size(self) -> int:
        return self.roles.model_vocab + N_ESCAPES

    @property
    def machine_bound(self) -> bool:
        """Coded with a float forward: decodes only where the encoder's floats can be reproduced."""
        return self.precision != EXACT

    @property
    def window(self) -> int | None:
        """The attention window the chunks were coded with (None: each token saw its whole chunk)."""
        data = self.extensions.get(WINDOW_EXTENSION)
        return None if data is None else Reader(data).varint(MAX_CHUNK_TOKENS)

    @property
    def side_models(self) -> bool:
        """Coded with side models (side/): then the batch grouping is the encoder's."""
        return SIDE_EXTENSION in self.extensions

    @property
    def side_models_version(self) -> int:
        return Reader(self.extensions[SIDE_EXTENSION]).varint()

    @property
    def learning_version(self) -> int:
        """learning.VERSION the weights learned by as the chunks were coded (then the batch grouping
        is the encoder's); 0: they did not."""
        data = self.extensions.get(LEARNING_EXTENSION)
        return 0 if data is None else Reader(data).varint()

    @property
    def rows(self) -> int:
        """Rows a float forward ran per step: the batch, padded to the fewest row-invariant rows."""
        return max(MIN_ROWS, self.batch_size)


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


def pack_header(header: Header, payload_crc: int) -> bytes:
    """Everything before the payloads: preamble, header body (ending in `payload_crc`, the
    CRC32 of the payload area) and the header CRC."""
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
            payload_crc.to_bytes(4, "little"),
        ]
    )
    head = MAGIC + bytes([FORMAT_VERSION]) + len(body).to_bytes(4, "little") + body
    return head + zlib.crc32(head).to_bytes(4, "little")


def pack(header: Header, payloads: list[bytes]) -> bytes:
    """The whole archive in memory (the compressor streams its payloads instead)."""
    area = b"".join(payloads)
    return pack_header(header, zlib.crc32(area)) + area


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


def read_upto(stream: BinaryIO, n: int) -> bytes:
    """Up to `n` bytes (fewer only at the end of the stream), read in bounded pieces, so that a
    length from a damaged header allocates only as much as the stream really holds."""
    parts = []
    while n > 0 and (part := stream.read(min(n, READ_PIECE))):
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _remaining(stream: BinaryIO) -> int | None:
    """Bytes left in a seekable stream (a file), None for a pipe."""
    if not stream.seekable():
        return None
    here = stream.tell()
    end = stream.seek(0, io.SEEK_END)
    stream.seek(here)
    return end - here


class ArchiveReader:
    """An archive read from a binary stream: its checked header at once, payloads on demand.

    From a file, the payload area's size and CRC are verified before anything is decoded, in
    one pass of reads, and the stream is rewound; from a pipe they are verified as the payloads
    stream past, after the last one (so consume `payload_batches` to its end before trusting
    what was decoded from it)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.header, self.payload_crc, self.header_size = _read_header(stream)
        self.payload_size = sum(c.stored_size for c in self.header.chunks)
        if (remaining := _remaining(stream)) is not None:
            self._check_payload_size(remaining)
            self.verify_payloads()

    def verify_payloads(self) -> None:
        """Read the payload area through its size and CRC checks, and rewind where the stream can."""
        start = self.stream.tell() if self.stream.seekable() else None
        for _ in self.payload_batches(1):
            pass
        if start is not None:
            self.stream.seek(start)

    @property
    def archive_size(self) -> int:
        return self.header_size + self.payload_size

    def _check_payload_size(self, have: int) -> None:
        if have < self.payload_size:
            raise TruncatedArchiveError(f"archive is truncated: {self.payload_size - have} payload bytes missing")
        if have > self.payload_size:
            raise CorruptArchiveError(f"{have - self.payload_size} unexpected bytes after the last chunk")

    def payload_batches(self, batch_size: int) -> Iterator[list[bytes]]:
        """The chunks' payloads, `batch_size` at a time; after the last batch, the payload area
        must end where the stream ends and match its CRC."""
        crc, read, batch = 0, 0, []
        for entry in self.header.chunks:
            payload = read_upto(self.stream, entry.stored_size)
            read += len(payload)
            if len(payload) < entry.stored_size:
                self._check_payload_size(read)
            crc = zlib.crc32(payload, crc)
            batch.append(payload)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
        extra = 0
        while piece := self.stream.read(READ_PIECE):
            extra += len(piece)
        self._check_payload_size(read + extra)
        if crc != self.payload_crc:
            raise CorruptArchiveError("payload checksum mismatch: the compressed data is damaged")


def unpack(archive: bytes) -> tuple[Header, list[bytes]]:
    """Parse and verify an archive held in memory; return its header and the chunk payloads."""
    reader = ArchiveReader(io.BytesIO(archive))
    return reader.header, [p for batch in reader.payload_batches(MAX_ROWS) for p in batch]


def _read_header(stream: BinaryIO) -> tuple[Header, int, int]:
    """The checked header, the payload area's CRC and the header's size in bytes."""
    preamble = read_upto(stream, PREAMBLE)
    if len(preamble) < PREAMBLE:
        if preamble == MAGIC[: len(preamble)] and preamble:
            raise TruncatedArchiveError("archive is truncated inside its preamble")
        raise CorruptArchiveError("not an llmzip archive (too short)")
    if preamble[:4] != MAGIC:
        raise CorruptArchiveError("not an llmzip archive (bad magic bytes)")
    version = preamble[4]
    if version != FORMAT_VERSION:
        if version in READERS:
            why = f"was written by {READERS[version]}, whose probabilities depend on the machine; decode it with it"
        else:
            why = "is newer than this llmzip; upgrade llmzip" if version > FORMAT_VERSION else "is unknown"
        raise UnsupportedVersionError(
            f"archive format version {version} {why} (this llmzip reads version {FORMAT_VERSION})"
        )
    header_size = PREAMBLE + int.from_bytes(preamble[5:9], "little") + 4
    need, remaining = header_size - PREAMBLE, _remaining(stream)
    rest = read_upto(stream, need) if remaining is None or remaining >= need else b""
    if len(rest) < need:
        have = PREAMBLE + (len(rest) if remaining is None else remaining)
        raise TruncatedArchiveError(f"archive is truncated: its header needs {header_size} bytes, it has {have}")
    body, stored_crc = rest[:-4], int.from_bytes(rest[-4:], "little")
    if zlib.crc32(preamble + body) != stored_crc:
        raise CorruptArchiveError("header checksum mismatch: the archive header is damaged")
    header, payload_crc = _parse_body(Reader(body))
    _check_header(header)
    return header, payload_crc, header_size


def _parse_body(r: Reader) -> tuple[Header, int]:
    model_name = r.string()
    fingerprint = r.take(8)
    roles = TokenRoles(r.varint(MAX_VOCAB), r.varint(MAX_VOCAB), r.varint(MAX_VOCAB))
    chunk_size, batch_size, threads = r.varint(MAX_CHUNK_TOKENS), r.varint(MAX_ROWS), r.varint(MAX_THREADS)
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
        model_name, fingerprint, roles, chunk_size, batch_size, threads, precision, step,
        torch_version, cpu_capability, original_size, checksum, chunks, extensions,
    )  # fmt: skip
    return header, payload_crc


def _check_header(h: Header) -> None:
    """Reject values no encoder writes, so later code can trust them."""
    problems = []
    if min(h.batch_size, h.threads, h.chunk_size) < 1:
        problems.append("bad coding geometry")
    elif h.chunks and h.batch_size > len(h.chunks):
        problems.append("bad coding geometry")  # encoders code at most all chunks in one batch
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
    if WINDOW_EXTENSION in h.extensions:
        window = Reader(h.extensions[WINDOW_EXTENSION])
        if window.varint(MAX_CHUNK_TOKENS) < 1 or not window.at_end() or h.machine_bound:
            problems.append("bad attention window")
    if SIDE_EXTENSION in h.extensions:
        try:
            version = Reader(h.extensions[SIDE_EXTENSION])
            known = version.varint() >= 1 and version.at_end()
        except CorruptArchiveError:
            known = False
        if not known:
            problems.append("bad side models entry")
    if LEARNING_EXTENSION in h.extensions:
        try:
            version = Reader(h.extensions[LEARNING_EXTENSION])
            known = version.varint() >= 1 and version.at_end() and not h.machine_bound
        except CorruptArchiveError:
            known = False
        if not known:
            problems.append("bad learning entry")
    if problems:
        raise CorruptArchiveError("invalid header: " + ", ".join(problems))
