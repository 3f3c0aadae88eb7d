"""Side models: the match model's guesses, the adaptive map, and archives coded with them."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmzip import Compressor, container, versions
from llmzip.errors import CorruptArchiveError, InvalidOptionError, UnsupportedVersionError
from llmzip.levels import DEFAULT_LEVEL, FASTEST, LEVELS
from llmzip.side import match

LOG = ("GET /index.html 200 user=alice\nGET /login 302 user=bob\n" * 12).encode()


def test_the_map_starts_as_the_identity_and_learns():
    adaptive = match.AdaptiveMap()
    for q in (1, 300, 1 << 14, 1 << 15, 50_000, match.ONE - 1):
        p, _ = adaptive.predict(4, q)
        assert abs(p - q) <= max(q, match.ONE - q) // 3  # piecewise linear between powers of two
    p, where = adaptive.predict(4, 1 << 12)
    for _ in range(50):
        adaptive.update(where, True)
    assert adaptive.predict(4, 1 << 12)[0] > 8 * p and adaptive.predict(5, 1 << 12)[0] == p  # one curve per length


def test_the_axis_is_monotone_and_continuous():
    x = np.array([match._axis(q) for q in range(1, match.ONE)])
    assert x[0] == 0 and x[-1] == (match.POINTS - 1) << match.FRACTION_BITS
    assert np.all(np.diff(x) >= 0) and np.diff(x).max() <= 1 << match.FRACTION_BITS


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.0, 1.0, width=32), min_size=2, max_size=60), st.integers(0, 59))
def test_guess_probability_is_the_exact_fraction(weights, guess):
    weights[0] = 1.0  # the predictor's largest weight is exactly 1
    guess %= len(weights)
    row = np.array([weights], dtype=np.float64)
    fixed = [int(Fraction(w) * 2**32) for w in weights]
    expected = min(max(fixed[guess] * match.ONE // sum(fixed), 1), match.ONE - 1)
    assert match.guess_probabilities(row, np.array([0]), np.array([guess]))[0] == expected
    stacked = np.concatenate([np.ones_like(row), row, row])
    assert list(match.guess_probabilities(stacked, np.array([2, 1]), np.array([guess] * 2))) == [expected] * 2


def test_the_kernel_gives_the_numpy_totals_and_floors(monkeypatch):
    """Weights as small as the model's, strided rows, some listed, floors kept."""
    weights = np.random.default_rng(1).random((5, 2, 3000)) ** 8 / 2**20
    weights[:, :, 0] = 1.0
    rows = np.array([4, 0, 2])
    assert match.kernels() is not None
    results = []
    for _ in ("kernel", "numpy"):
        out = np.full((5, 3000), -1.0)
        results.append((match.fixed_totals(weights[:, 1], rows, out), out))
        monkeypatch.setattr(match, "kernels", lambda: None)
    (totals, floors), (numpy_totals, numpy_floors) = results
    assert np.array_equal(totals, numpy_totals) and np.array_equal(floors, numpy_floors)
    assert totals[0] == sum(int(Fraction(w) * 2**32) for w in weights[4, 1]) and floors[1, 0] == -1.0


def guesses(tokens: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The match model's guess (-1: none) and match length at every position, stepping the
    rows in lockstep as the coder does."""
    model = match.MatchModel(tokens)
    guessed = [np.full(len(row), -1) for row in tokens]
    lengths = [np.zeros(len(row), dtype=np.int64) for row in tokens]
    for t in range(max(map(len, tokens))):
        active = np.array([r for r, row in enumerate(tokens) if len(row) > t])
        for r in active:
            if (guess := model.guess(r, t)) is not None:
                guessed[r][t], lengths[r][t] = guess
        model.advance(t, active)
    return guessed, lengths


def test_a_match_guesses_what_followed_its_context():
    tokens = [np.array([5, 6, 7, 8, 1, 5, 6, 7, 8, 2])]
    guessed, lengths = guesses(tokens)
    assert list(guessed[0][:8]) == [-1] * 8  # 5 6 7 seen once: the guess comes at position 8
    assert (guessed[0][8], lengths[0][8]) == (8, 1) and (guessed[0][9], lengths[0][9]) == (1, 2)


def test_rows_guess_from_each_other_but_only_what_is_known():
    """Row 1 repeats row 0 two steps behind: it guesses row 0's tokens, which are decoded by then."""
    row0 = np.arange(10, 30)
    tokens = [row0, np.concatenate([[1, 2], row0[:18]])]
    guessed, _ = guesses(tokens)
    known = np.flatnonzero(guessed[1] >= 0)
    assert len(known) > 10 and np.array_equal(guessed[1][known], tokens[1][known])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), max_size=40), min_size=1, max_size=4))
def test_a_guess_never_needs_a_token_not_yet_decoded(rows):
    """Whatever the rows, each guess is a token that the lockstep decoder knows at its step."""
    tokens = [np.array(r, dtype=np.int64) for r in rows]
    model = match.MatchModel(tokens)
    for t in range(max(map(len, tokens))):
        active = np.array([r for r, x in enumerate(tokens) if len(x) > t])
        for r in active:
            if model.match[r] is not None and model.guess(r, t) is not None:
                source, position, _ = model.match[r]
                assert position < t and position < len(tokens[source])
        model.advance(t, active)


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_side_models_round_trip_with_raw_chunks_and_the_encoders_batches(tiny, batch):
    """Bytes the tiny model cannot code become raw chunks; the decoder runs the archive's batches
    whatever it is asked. The side models shrink repeated lines where a batch holds them (the
    match model sees its own batch)."""
    data = LOG + bytes(range(256)) + LOG
    with_side = Compressor(tiny, chunk_size=64, batch_size=batch, threads=1, side_models=True)
    archive = with_side.compress(data)
    header, _ = container.unpack(archive)
    assert header.side_models and header.batch_size == min(batch, len(header.chunks))
    assert any(c.raw for c in header.chunks) and with_side.stats.side_models
    for decoder_batch, threads in ((7, 2), (1, 1)):
        assert Compressor(tiny, batch_size=decoder_batch, threads=threads).decompress(archive) == data
    plain = Compressor(tiny, chunk_size=64, batch_size=batch, threads=1, side_models=False).compress(data)
    if batch == 64:
        assert len(archive) < 0.8 * len(plain)


def test_levels_choose_side_models(tiny):
    assert not LEVELS[FASTEST].side and Compressor(tiny, level=FASTEST).side_models is False
    assert Compressor(tiny, level=DEFAULT_LEVEL).side_models is True
    assert Compressor(tiny, precision="fp32").side_models is False  # a level's, with float probabilities
    with pytest.raises(InvalidOptionError, match="side models need the exact predictor"):
        Compressor(tiny, side_models=True, precision="fp32")
    archive = Compressor(tiny, level=FASTEST).compress(LOG)
    assert not container.unpack(archive)[0].side_models and Compressor(tiny).decompress(archive) == LOG


@pytest.fixture(scope="module")
def side_archive(tiny):
    return Compressor(tiny, chunk_size=64, batch_size=3, threads=1).compress(LOG)


@pytest.mark.parametrize("entry", [b"\x00", b"\x01\x00", b"\x80"])
def test_a_bad_side_models_entry_is_refused(tiny, side_archive, entry):
    header, payloads = container.unpack(side_archive)
    header.extensions = header.extensions | {container.SIDE_EXTENSION: entry}
    with pytest.raises(CorruptArchiveError, match="side models"):
        container.unpack(container.pack(header, payloads))
    header.extensions = header.extensions | {container.SIDE_EXTENSION: container.varint(1)}
    header.precision, header.step = "fp32", "transformers-5.24.0"
    with pytest.raises(CorruptArchiveError, match="side models on a machine-bound archive"):
        Compressor(tiny).decompress(container.pack(header, payloads))


def test_an_unknown_side_models_version_is_refused(tiny, side_archive):
    header, payloads = container.unpack(side_archive)
    header.extensions = header.extensions | {container.SIDE_EXTENSION: container.varint(versions.SIDE_MODELS + 1)}
    with pytest.raises(UnsupportedVersionError, match=f"side models version {versions.SIDE_MODELS + 1}, unknown"):
        Compressor(tiny).decompress(container.pack(header, payloads))


def test_a_damaged_flag_stream_length_is_reported(tiny, side_archive):
    header, payloads = container.unpack(side_archive)
    payloads[0] = b"\xff\xff\xff\x7f" + payloads[0][1:]
    with pytest.raises(CorruptArchiveError):
        Compressor(tiny).decompress(container.pack(header, payloads))
