"""Compress -> decompress is the identity, for every kind of input and geometry."""

import dataclasses

import numpy as np
import pytest
from conftest import byte_level_tokenizer, tiny_model
from test_tokenization import SAMPLES

import llmzip
from llmzip import Compressor, InvalidOptionError, WrongModelError, container, levels
from llmzip.compressor import balanced_batch_size
from llmzip.levels import BEST, DEFAULT_LEVEL, FASTEST, LEVELS, Level, chunk_size_for


@pytest.mark.parametrize("data", SAMPLES, ids=range(len(SAMPLES)))
def test_samples(compressor, data):
    assert compressor.decompress(compressor.compress(data)) == data


def test_random_bytes_are_stored_raw_and_never_grow(tiny):
    compressor = Compressor(tiny, chunk_size=256, batch_size=16, threads=1)
    data = np.random.default_rng(1).integers(0, 256, 30_000, dtype=np.uint8).tobytes()
    archive = compressor.compress(data)
    header, payloads = container.unpack(archive)
    assert compressor.decompress(archive) == data
    assert all(c.raw for c in header.chunks)
    assert len(archive) - len(data) == len(archive) - sum(len(p) for p in payloads)  # header only
    assert len(archive) - len(data) < 64 + 12 * len(header.chunks)


def test_text_compresses(compressor):
    data = ("the rain and the sun in the morning " * 40).encode()
    archive = compressor.compress(data)
    assert compressor.decompress(archive) == data
    assert compressor.stats.raw_chunks == 0 and len(archive) < 0.9 * len(data)  # random weights: ~8 bits/token


def test_mixed_batch_with_a_raw_chunk(tiny):
    """A chunk that does not shrink is stored raw and its row left idle, in both directions."""
    compressor = Compressor(tiny, chunk_size=64, batch_size=4, threads=1)
    noise = np.random.default_rng(2).integers(0, 256, 300, dtype=np.uint8).tobytes()
    data = b"the the the the the " * 20 + noise + b" and the rain " * 20
    archive = compressor.compress(data)
    header, _ = container.unpack(archive)
    assert 0 < sum(c.raw for c in header.chunks) < len(header.chunks)
    assert compressor.decompress(archive) == data


@pytest.mark.parametrize("n", [63, 64, 65, 128, 255, 256, 257])
def test_chunk_and_batch_boundaries(compressor, n):
    """'x' has no merges: n bytes are n tokens; chunks of 64 tokens, batches of 4 chunks."""
    data = b"x" * n
    assert len(compressor.model.tokenizer.encode(data)) == n
    archive = compressor.compress(data)
    header, _ = container.unpack(archive)
    assert [c.tokens or c.stored_size for c in header.chunks][-1] == (n - 1) % 64 + 1
    assert compressor.decompress(archive) == data


def test_decode_ignores_the_decoders_own_geometry(tiny):
    data = ("the rain and the sun. " * 30).encode() + bytes(range(256))
    archive = Compressor(tiny, chunk_size=32, batch_size=8, threads=2).compress(data)
    assert Compressor(tiny, batch_size=1, threads=1).decompress(archive) == data


def test_wrong_model_is_refused(compressor):
    other = Compressor(tiny_model(byte_level_tokenizer(), seed=1, name="other"))
    archive = compressor.compress(b"the rain")
    with pytest.raises(WrongModelError, match="archive needs model 'tiny'"):
        other.decompress(archive)


@pytest.mark.parametrize("side_models", [False, True])
def test_coder_overhead_is_small(tiny, side_models):
    compressor = Compressor(tiny, chunk_size=1024, batch_size=4, threads=1, side_models=side_models)
    data = ("Привет мир, the rain and the sun. " * 120).encode()
    compressor.compress(data)
    stats = compressor.stats
    # at most one 32-bit word per coded stream above the ideal (side models: one flag stream per
    # batch and its length byte too), plus 0.5%
    streams = 32 * stats.chunks + 40 * side_models * -(-stats.chunks // compressor.batch_size)
    assert stats.ideal_bits <= stats.coded_bits <= stats.ideal_bits * 1.005 + streams


def test_a_window_round_trips_across_cache_slides_in_any_batch(tiny):
    """Chunks of 400 tokens attending a window of 6: longer than the decoder's cache (sinks +
    window + SLACK), so it slides; any batch decodes, and the window changes the archive."""
    data = ("the rain and the sun in Привет мир, " * 40).encode()
    archive = Compressor(tiny, chunk_size=400, window=6).compress(data)
    header, _ = container.unpack(archive)
    assert header.window == 6 and len(header.chunks) >= 2 and max(c.tokens for c in header.chunks) > 300
    for batch in (1, 3):
        assert Compressor(tiny, batch_size=batch, threads=1).decompress(archive) == data
    assert Compressor(tiny, chunk_size=400, window=None, level=1).compress(data) != archive


def test_a_window_as_long_as_the_chunks_is_not_recorded(tiny):
    """It would change nothing: the archive is the one of whole-chunk attention."""
    data = b"the rain and the sun " * 10
    windowed = Compressor(tiny, chunk_size=64, window=64)
    assert container.unpack(windowed.compress(data))[0].window is None and windowed.stats.window is None


def test_levels_set_chunk_size_and_window(tiny, tiny_gemma3, monkeypatch):
    fast, best = Compressor(tiny, level=FASTEST), Compressor(tiny, level=BEST)
    assert (fast.chunk_size, fast.window) == (LEVELS[FASTEST].chunk_size, None)
    context = tiny.model.config.max_position_embeddings  # 4096: -9's window does not fit, -8's does
    assert best.chunk_size == min(LEVELS[BEST].chunk_size, (context - 1) * 15 // 16)
    assert Compressor(tiny, level=8).chunk_size == LEVELS[8].chunk_size  # the Llama pins its sinks
    assert Compressor(tiny, level=2).chunk_size_for(10**7) == (context - 1) * 15 // 16  # growth stops there
    context = tiny_gemma3.model.config.max_position_embeddings
    assert Compressor(tiny_gemma3, level=BEST).window == LEVELS[BEST].window >= context // 2
    monkeypatch.setattr(tiny_gemma3, "facts", dataclasses.replace(tiny_gemma3.facts, context=32_768))  # gemma3-270m's
    best = Compressor(tiny_gemma3, level=BEST)
    assert (best.chunk_size, best.window) == (LEVELS[BEST].chunk_size, 16_384)  # half the context
    assert Compressor(tiny_gemma3, level=8).window == LEVELS[8].window  # the other levels keep theirs
    assert Compressor(tiny, level=BEST, chunk_size=100, window=7).chunk_size == 100
    floats = Compressor(tiny, level=DEFAULT_LEVEL, precision="fp32")  # no window: its chunks are the window long
    assert (floats.chunk_size, floats.window) == (LEVELS[DEFAULT_LEVEL].window, None)


def test_a_windowed_levels_chunks_grow_while_the_input_fills_enough_rows():
    rows = levels.STEP_ROWS
    assert chunk_size_for(4096, None, 10**7, 7679) == 4096  # no window: a token's cost grows with its chunk
    assert chunk_size_for(4096, 1024, 1000, 7679) == 4096  # small input: the level's
    assert chunk_size_for(4096, 1024, rows * 5000 + 1, 7679) == 5001  # rows chunks, the last one shorter
    assert chunk_size_for(4096, 1024, 10**7, 7679) == 7679  # large input: the longest


def test_the_archive_holds_the_grown_chunk_size(tiny, monkeypatch):
    """The decoder reads the chunk size the encoder chose from the header."""
    monkeypatch.setitem(LEVELS, 2, Level(16, 8))
    monkeypatch.setattr(levels, "STEP_ROWS", 2)
    data = b"the rain and the sun and the wind " * 12
    compressor = Compressor(tiny, level=2)
    archive = compressor.compress(data)
    header = container.unpack(archive)[0]
    tokens = compressor.stats.tokens
    assert header.chunk_size == compressor.stats.chunk_size == -(-tokens // 2) > 16
    assert len(header.chunks) == 2 and header.window == 8
    assert compressor.decompress(archive) == data
    assert container.unpack(Compressor(tiny, level=2, chunk_size=16).compress(data))[0].chunk_size == 16  # given: kept


@pytest.mark.parametrize("model", ["tiny", "tiny_gemma3"])
def test_a_windowed_chunk_outruns_the_context_where_the_sinks_are_pinned(request, model, monkeypatch):
    """The Llama's forward 4 and the Gemma's forward 3 keep every query within window + sinks of
    the keys it attends, so a chunk may be longer than the model's context; without a window,
    or with one as long as the context, it is refused."""
    loaded = request.getfixturevalue(model)
    monkeypatch.setattr(loaded, "facts", dataclasses.replace(loaded.facts, context=64))
    data = b"the rain and the sun and the wind " * 12
    compressor = Compressor(loaded, chunk_size=300, window=40)
    archive = compressor.compress(data)
    assert compressor.stats.chunks == 1 and compressor.stats.tokens > 4 * 64  # one chunk, four contexts long
    assert compressor.decompress(archive) == data
    with pytest.raises(InvalidOptionError, match=r"chunk size plus steering prefix \(300 \+ 0"):
        Compressor(loaded, chunk_size=300).compress(data)
    with pytest.raises(InvalidOptionError, match=r"window plus sinks plus steering prefix \(64 \+ 0"):
        Compressor(loaded, chunk_size=300, window=60).compress(data)


def test_module_level_api(tiny):
    data = "Привет мир".encode()
    assert llmzip.decompress(llmzip.compress(data, model=tiny, chunk_size=4), model=tiny) == data


@pytest.mark.parametrize(
    "options",
    [
        {"chunk_size": 0},
        {"batch_size": 0},
        {"threads": 0},
        {"batch_size": 5000},
        {"chunk_size": 1 << 21},
        {"level": 0},
        {"level": 10},
        {"window": 0},
        {"window": 8, "precision": "fp32"},
    ],
)
def test_bad_options_are_refused(tiny, options):
    with pytest.raises(InvalidOptionError):
        Compressor(tiny, **options)


def test_chunk_longer_than_the_models_context_is_refused(tiny):
    with pytest.raises(InvalidOptionError, match="context"):  # without a window (one pins the sinks: above)
        Compressor(tiny, level=FASTEST, chunk_size=tiny.model.config.max_position_embeddings).compress(b"x")


@pytest.mark.parametrize(
    ("chunks", "most", "expected"), [(17, 16, 9), (16, 16, 16), (33, 16, 11), (1, 16, 1), (0, 16, 16)]
)
def test_batches_are_filled_evenly(chunks, most, expected):
    assert balanced_batch_size(chunks, most) == expected


def test_archive_records_the_balanced_batch(tiny):
    archive = Compressor(tiny, chunk_size=8, batch_size=16, threads=1).compress(b"x" * (17 * 8))
    header, _ = container.unpack(archive)
    assert (len(header.chunks), header.batch_size) == (17, 9)
