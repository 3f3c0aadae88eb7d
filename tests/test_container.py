"""Damaged archives give an llmzip error, never wrong output and never another exception."""

import dataclasses
from pathlib import Path

import pytest

from llmzip import (
    Compressor,
    CorruptArchiveError,
    DecodeMismatchError,
    LlmzipError,
    TruncatedArchiveError,
    UnsupportedVersionError,
    container,
)


@pytest.fixture(scope="module")
def small(compressor):
    data = b"the rain and the sun\r\n" * 8 + b"\xff\x04 raw bytes"
    archive = compressor.compress(data)
    header, _ = container.unpack(archive)
    assert len(header.chunks) >= 2
    return data, archive


def test_every_single_byte_corruption_is_an_error(compressor, small):
    _, archive = small
    for position in range(len(archive)):
        for flip in (0x01, 0x80, 0xFF):
            damaged = bytearray(archive)
            damaged[position] ^= flip
            with pytest.raises(LlmzipError):
                compressor.decompress(bytes(damaged))


def test_every_truncation_is_an_error(compressor, small):
    _, archive = small
    for size in range(len(archive)):
        with pytest.raises(CorruptArchiveError):
            compressor.decompress(archive[:size])


def test_truncated_payload_is_reported_as_truncation(small):
    _, archive = small
    with pytest.raises(TruncatedArchiveError, match="payload bytes missing"):
        container.unpack(archive[:-1])


def test_appended_garbage_is_an_error(small):
    _, archive = small
    with pytest.raises(CorruptArchiveError, match="unexpected bytes"):
        container.unpack(archive + b"\0")


def test_not_an_archive(compressor):
    with pytest.raises(CorruptArchiveError, match="not an llmzip archive"):
        compressor.decompress(b"\x89PNG\r\n\x1a\n" + bytes(100))


def test_newer_version_is_refused(small):
    _, archive = small
    newer = archive[:4] + bytes([container.FORMAT_VERSION + 1]) + archive[5:]
    with pytest.raises(UnsupportedVersionError, match="newer"):
        container.unpack(newer)


def test_version_1_archive_names_the_llmzip_that_reads_it():
    """Format 1 (llmzip 0.1, machine-dependent floats) is not decoded: one line says which llmzip does."""
    archive = (Path(__file__).parent / "golden" / "alice300-v1.lz").read_bytes()
    with pytest.raises(UnsupportedVersionError, match=r"version 1 was written by llmzip 0\.1.*reads version 2"):
        container.unpack(archive)


def test_unknown_critical_extension_is_refused(compressor, small):
    data, archive = small
    header, payloads = container.unpack(archive)
    known = header.extensions
    header.extensions = known | {7: b"future"}
    with pytest.raises(UnsupportedVersionError, match="extension 7"):
        compressor.decompress(container.pack(header, payloads))
    header.extensions = known | {200: b"optional"}
    assert compressor.decompress(container.pack(header, payloads)) == data


@pytest.mark.parametrize("window", [b"\x00", b"\x08\x00", b"\x80", b"\x80\x80\x80\x80\x01"])
def test_a_bad_window_is_refused(small, window):
    """Window 0, trailing bytes, a cut varint, a window past the chunk limit."""
    _, archive = small
    header, payloads = container.unpack(archive)
    header.extensions = header.extensions | {container.WINDOW_EXTENSION: window}
    with pytest.raises(CorruptArchiveError):
        container.unpack(container.pack(header, payloads))


def test_a_window_on_a_machine_bound_archive_is_refused(small):
    _, archive = small
    header, payloads = container.unpack(archive)
    header.precision = "fp32"
    header.extensions = header.extensions | {container.WINDOW_EXTENSION: container.varint(8)}
    with pytest.raises(CorruptArchiveError, match="window"):
        container.unpack(container.pack(header, payloads))


def test_pack_unpack_round_trip(small):
    _, archive = small
    header, payloads = container.unpack(archive)
    assert container.pack(header, payloads) == archive


def test_header_values_beyond_limits_are_rejected(small):
    _, archive = small
    header, payloads = container.unpack(archive)
    header.batch_size = 0  # every encoder codes at least one chunk a batch
    with pytest.raises(CorruptArchiveError, match="geometry"):
        container.unpack(container.pack(header, payloads))


def test_geometry_must_be_what_encoders_write(small):
    _, archive = small
    header, payloads = container.unpack(archive)
    header.batch_size = len(header.chunks) + 1
    with pytest.raises(CorruptArchiveError, match="geometry"):
        container.unpack(container.pack(header, payloads))


def test_more_coded_tokens_than_bytes_is_refused(small):
    _, archive = small
    header, payloads = container.unpack(archive)
    raw = sum(c.stored_size for c in header.chunks if c.raw)
    header.original_size = raw + sum(c.tokens for c in header.chunks) - 1
    with pytest.raises(CorruptArchiveError, match="more coded tokens than original bytes"):
        container.unpack(container.pack(header, payloads))


def test_vocabulary_other_than_the_models_is_refused(compressor, small):
    """Found by the long fuzz run: a header whose CRCs match but whose vocabulary does not."""
    _, archive = small
    header, payloads = container.unpack(archive)
    header.roles = dataclasses.replace(header.roles, model_vocab=header.roles.model_vocab - 1)
    with pytest.raises(CorruptArchiveError, match="vocabulary"):
        compressor.decompress(container.pack(header, payloads))


def test_more_threads_than_cpus_run_as_many_as_there_are(tiny):
    """Found by the long fuzz run: 1000 threads on 2 CPUs stalled the decoder of a machine-bound
    archive (which must run the encoder's threads; an exact one runs the decoder's own)."""
    compressor = Compressor(tiny, chunk_size=64, batch_size=4, threads=1, precision="fp32")
    data = b"the rain and the sun\r\n" * 8
    header, payloads = container.unpack(compressor.compress(data))
    header.threads = 1000
    assert compressor.decompress(container.pack(header, payloads)) == data
    header.chunks[0] = dataclasses.replace(header.chunks[0], crc32=header.chunks[0].crc32 ^ 1)
    with pytest.raises(DecodeMismatchError, match="made with 1000 threads and this machine runs"):
        compressor.decompress(container.pack(header, payloads))
