"""Mutants of a real llmzip archive, and the rule every mutant must obey.

Raw mutations (bit flips, byte edits, insertions, truncations, appended garbage) are what disks
and networks do; the CRCs stop nearly all of them at the door. Sealed mutations change the
header's fields or the payloads and then recompute the CRCs, as a malicious or buggy writer
would, so that the parser's limits and the decoder behind them are reached too.

The rule (`verdict`): decoding a mutant gives back exactly the original or raises an
`LlmzipError`; any other exception or any other output is a bug. Hangs are caught by the
caller's time limit.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import strategies as st

from llmzip import Compressor, LlmzipError, container

INTERESTING = [0, 1, 2, 3, 4, 5, 63, 64, 127, 128, 255, 256, 1023, 1024, 4096, 1 << 20, (1 << 20) + 1,
               1 << 24, (1 << 31) - 1, 1 << 32, (1 << 63) - 1]  # fmt: skip


class _RecordingReader(container.Reader):
    """A header Reader that notes where each varint it reads lies."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.varints: list[tuple[int, int]] = []

    def varint(self, limit: int = 1 << 63) -> int:
        start = self.pos
        value = super().varint(limit)
        self.varints.append((start, self.pos))
        return value


@dataclass(frozen=True)
class Layout:
    """Where things lie in an archive: its header body, the varints in it, the payloads."""

    archive: bytes
    varints: list[tuple[int, int]]  # [start, end) within the body
    payloads: list[tuple[int, int]]  # [start, end) within the payload area

    @property
    def body(self) -> bytes:
        return self.archive[container.PREAMBLE : self.payload_start - 4]

    @property
    def payload_start(self) -> int:
        return container.PREAMBLE + int.from_bytes(self.archive[5:9], "little") + 4

    @property
    def payload_area(self) -> bytes:
        return self.archive[self.payload_start :]

    @classmethod
    def of(cls, archive: bytes) -> Layout:
        header, _ = container.unpack(archive)
        body_end = container.PREAMBLE + int.from_bytes(archive[5:9], "little")
        reader = _RecordingReader(archive[container.PREAMBLE : body_end])
        container._parse_body(reader)
        offsets, start = [], 0
        for c in header.chunks:
            offsets.append((start, start + c.stored_size))
            start += c.stored_size
        return cls(archive, reader.varints, offsets)


def seal(archive: bytes, body: bytes, payload_area: bytes) -> bytes:
    """An archive from a header body and payload area, with every length and CRC made to match."""
    body = body[:-4] + zlib.crc32(payload_area).to_bytes(4, "little")
    head = archive[:5] + len(body).to_bytes(4, "little") + body
    return head + zlib.crc32(head).to_bytes(4, "little") + payload_area


# -- strategies: each draws (name, mutant) ---------------------------------------------------


def mutants(layout: Layout) -> st.SearchStrategy[tuple[str, bytes]]:
    a, n = layout.archive, len(layout.archive)
    body, area = layout.body, layout.payload_area
    position = st.integers(0, n - 1)
    garbage = st.binary(min_size=1, max_size=64)

    def flip(p: int, bit: int) -> tuple[str, bytes]:
        return "bit flip", a[:p] + bytes([a[p] ^ (1 << bit)]) + a[p + 1 :]

    def set_byte(p: int, v: int) -> tuple[str, bytes]:
        return "byte edit", a[:p] + bytes([v]) + a[p + 1 :]

    def set_varint(k: int, value: int) -> tuple[str, bytes]:
        start, end = layout.varints[k % len(layout.varints)]
        return "sealed varint", seal(a, body[:start] + container.varint(value) + body[end:], area)

    def sealed_body_edit(p: int, v: int) -> tuple[str, bytes]:
        p %= len(body) - 4
        return "sealed header byte", seal(a, body[:p] + bytes([v]) + body[p + 1 :], area)

    def sealed_payload_edit(p: int, v: int) -> tuple[str, bytes]:
        if not area:
            return "sealed payload byte", a
        p %= len(area)
        return "sealed payload byte", seal(a, body, area[:p] + bytes([v]) + area[p + 1 :])

    def swap_payloads(i: int, j: int) -> tuple[str, bytes]:
        pieces = [area[s:e] for s, e in layout.payloads]
        i, j = i % len(pieces), j % len(pieces)
        pieces[i], pieces[j] = pieces[j], pieces[i]
        return "sealed payload swap", seal(a, body, b"".join(pieces))

    def swap_chunks(i: int, j: int) -> tuple[str, bytes]:
        """Swap two chunks with their table entries: each is intact, their order is not."""
        header, payloads = container.unpack(a)
        i, j = i % len(payloads), j % len(payloads)
        header.chunks[i], header.chunks[j] = header.chunks[j], header.chunks[i]
        payloads[i], payloads[j] = payloads[j], payloads[i]
        return "sealed chunk swap", container.pack(header, payloads)

    return st.one_of(
        st.builds(flip, position, st.integers(0, 7)),
        st.builds(set_byte, position, st.integers(0, 255)),
        st.builds(lambda p: ("truncation", a[:p]), st.integers(0, n - 1)),
        st.builds(lambda g: ("appended garbage", a + g), garbage),
        st.builds(lambda p, g: ("inserted bytes", a[:p] + g + a[p:]), position, garbage),
        st.builds(lambda p, k: ("deleted bytes", a[:p] + a[p + k :]), position, st.integers(1, 16)),
        st.builds(set_varint, st.integers(0, 1 << 16), st.sampled_from(INTERESTING) | st.integers(0, 1 << 64)),
        st.builds(sealed_body_edit, st.integers(0, 1 << 16), st.integers(0, 255)),
        st.builds(sealed_payload_edit, st.integers(0, 1 << 20), st.integers(0, 255)),
        st.builds(swap_payloads, st.integers(0, 64), st.integers(0, 64)),
        st.builds(swap_chunks, st.integers(0, 64), st.integers(0, 64)),
    )


def verdict(decompress: Callable[[bytes], bytes], original: bytes, mutant: bytes) -> str:
    """ "exact", "llmzip error", or what went wrong: "wrong output" or "exception: ..."."""
    try:
        out = decompress(mutant)
    except LlmzipError:
        return "llmzip error"
    except Exception as e:
        return f"exception: {type(e).__name__}: {e}"
    return "exact" if out == original else "wrong output"


class Pipe(io.RawIOBase):
    """A stream that cannot seek and hands out a few bytes per read, like a pipe."""

    def __init__(self, data: bytes, piece: int = 7) -> None:
        self.data, self.pos, self.piece = data, 0, piece

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        n = min(len(buffer), self.piece, len(self.data) - self.pos)
        buffer[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


VIA = ["file", "pipe"]  # how a decoder reads the archive (see decoder)


def decoder(compressor: Compressor, via: str) -> Callable[[bytes], bytes]:
    """Decompress an archive read as a file is (seekable: payload size and CRC checked before
    decoding) or as a pipe is (checked only after the last payload)."""
    if via == "file":
        return compressor.decompress
    return lambda archive: b"".join(
        compressor.iter_decompress(container.ArchiveReader(io.BufferedReader(Pipe(archive))))
    )
