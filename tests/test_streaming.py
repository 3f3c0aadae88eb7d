"""Input and archives are streamed: tokenized block by block, payloads read batch by batch, and
damage seen only at a pipe's end still fails before anything is trusted."""

import io
from contextlib import closing

import numpy as np
import pytest
from fuzz.mutations import Pipe, decoder

from llmzip import CorruptArchiveError, TruncatedArchiveError, chunking, container
from llmzip.chunking import TokenChunks, read_blocks

TEXT = "the rain and the sun\nécrit 雨 Привет мир\n".encode() * 50


@pytest.mark.parametrize("size", [1, 5, 64, 1000])
@pytest.mark.parametrize(
    "data",
    [TEXT, TEXT.replace(b"\n", b" "), "雨".encode() * 300, bytes(range(256)) * 9, b"\x80" * 9, b""],
    ids=["lines", "one-line", "cjk", "binary", "continuation-bytes", "empty"],
)
def test_blocks_join_to_the_input_and_keep_characters_whole(data, size):
    blocks = list(read_blocks(io.BufferedReader(Pipe(data)), size))
    assert b"".join(blocks) == data
    assert all(blocks)
    if data.decode("utf-8", errors="replace").encode() == data:
        for block in blocks:
            block.decode("utf-8")  # valid UTF-8 input is never cut inside a character


def test_token_chunks_cover_the_input(tiny, monkeypatch):
    monkeypatch.setattr(chunking, "BLOCK_BYTES", 100)  # many blocks
    with closing(TokenChunks(io.BytesIO(TEXT), tiny.tokenizer, chunk_size=50)) as chunks:
        assert chunks.input_bytes == len(TEXT) and len(chunks) == -(-chunks.tokens // 50)
        assert [len(c) for c in chunks[:-1]] == [50] * (len(chunks) - 1)
        assert np.array_equal(np.concatenate(chunks[2:5]), np.concatenate([chunks[2], chunks[3], chunks[4]]))
        assert tiny.tokenizer.decode(np.concatenate(list(chunks))) == TEXT
        with pytest.raises(IndexError):
            chunks[len(chunks)]


def test_round_trip_across_tokenizer_blocks(compressor, monkeypatch):
    monkeypatch.setattr(chunking, "BLOCK_BYTES", 97)
    data = TEXT + bytes(range(256)) + TEXT
    assert compressor.decompress(compressor.compress(data)) == data


@pytest.fixture(scope="module")
def archive(compressor):
    archive = compressor.compress(TEXT)
    assert len(container.unpack(archive)[0].chunks) > 4  # several batches
    return archive


def test_decode_from_a_pipe(compressor, archive):
    assert decoder(compressor, "pipe")(archive) == TEXT


@pytest.mark.parametrize(
    "damage, error, message",
    [
        (lambda a: a[:-3] + bytes([a[-3] ^ 1]) + a[-2:], CorruptArchiveError, None),
        (lambda a: a[:-1], TruncatedArchiveError, "payload bytes missing"),
        (lambda a: a + b"extra", CorruptArchiveError, "5 unexpected bytes"),
    ],
    ids=["flip", "cut", "appended"],
)
def test_damage_seen_at_a_pipes_end_still_fails(compressor, archive, damage, error, message):
    with pytest.raises(error, match=message):
        decoder(compressor, "pipe")(damage(archive))


def test_huge_header_length_allocates_nothing(archive, tmp_path):
    huge = archive[:5] + (2**32 - 1).to_bytes(4, "little") + archive[9:]
    path = tmp_path / "huge.lz"
    path.write_bytes(huge)
    with open(path, "rb") as f, pytest.raises(TruncatedArchiveError, match=f"it has {len(huge)}"):
        container.ArchiveReader(f)  # a file: its size is checked before any read
    with pytest.raises(TruncatedArchiveError):
        container.ArchiveReader(io.BufferedReader(Pipe(huge, piece=4096)))  # a pipe: reads only what it holds
