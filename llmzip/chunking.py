"""Input stream -> token ids spooled to disk -> chunks read back one at a time.

The input is read and tokenized a block at a time and its ids go to a temporary file, so memory
does not grow with the input: the coder reads back one batch of chunks at a time, steering
training the few chunks it samples. The whole-file size and checksum are taken on the way.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator, Sequence
from typing import BinaryIO, overload

import numpy as np

from .tokenization import ByteTokenizer

BLOCK_BYTES = 1 << 20  # input bytes tokenized per call
DEFAULT_BATCH_SIZE = 64  # chunks coded together; see README "Choosing chunk and batch size"
ID_DTYPE = np.dtype("<i4")  # alphabets stay below 2**24 + 256 symbols (container.MAX_VOCAB)


def read_blocks(stream: BinaryIO, size: int) -> Iterator[bytes]:
    """The stream in blocks of about `size` bytes, cut after a newline in a block's second half
    where there is one, else before a byte that starts a UTF-8 character, so that the tokenizer
    sees whole lines or at least whole characters. The blocks join to exactly the stream."""
    rest = b""
    while data := stream.read(size):
        block = rest + data
        cut = block.rfind(b"\n", len(block) // 2) + 1
        if not cut:
            cut = len(block) - 1  # back up over (at most 3) UTF-8 continuation bytes
            while cut > max(0, len(block) - 4) and 0x80 <= block[cut] < 0xC0:
                cut -= 1
        if cut > 0:
            yield block[:cut]
        rest = block[cut:]
    if rest:
        yield rest


class TokenChunks(Sequence[np.ndarray]):
    """A stream's token ids on disk; item i is chunk i (`chunk_size` ids, the last maybe fewer).
    `chunk_size` may be set after reading, from the token count."""

    def __init__(self, stream: BinaryIO, tokenizer: ByteTokenizer, chunk_size: int) -> None:
        """Read and tokenize `stream` to its end."""
        self.chunk_size = chunk_size
        self.tokens = self.input_bytes = 0
        self.sha256 = hashlib.sha256()
        # Unlinked at once, so nothing is left behind even on SIGKILL; closed by close().
        self._file = tempfile.TemporaryFile()  # noqa: SIM115
        for block in read_blocks(stream, BLOCK_BYTES):
            ids = tokenizer.encode(block)
            self._file.write(ids.astype(ID_DTYPE).tobytes())
            self.tokens += len(ids)
            self.input_bytes += len(block)
            self.sha256.update(block)

    def __len__(self) -> int:
        return -(-self.tokens // self.chunk_size)

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, i: slice) -> list[np.ndarray]: ...
    def __getitem__(self, i: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if not 0 <= i < len(self):
            raise IndexError(i)
        start = i * self.chunk_size
        count = min(self.chunk_size, self.tokens - start)
        self._file.seek(start * ID_DTYPE.itemsize)
        return np.frombuffer(self._file.read(count * ID_DTYPE.itemsize), ID_DTYPE).astype(np.int64)

    def close(self) -> None:
        self._file.close()
