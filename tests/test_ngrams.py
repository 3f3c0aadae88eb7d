"""Token n-grams mixed with the model: the mixture, what it learns, and archives coded with it."""

from fractions import Fraction

import numpy as np

from llmzip import Compressor, container, versions
from llmzip.side import ngrams

LOG = ("GET /index.html 200 user=alice\nGET /login 302 user=bob\n" * 12).encode()


def _step(mixer: ngrams.NgramMixer, t: int, rows: np.ndarray, model: np.ndarray) -> np.ndarray:
    """Mix, learn, and return the mixed rows."""
    probs = np.repeat(model[None], len(mixer.tokens), 0)
    mixture = mixer.mix(t, rows, probs)
    mixer.learn(t, rows, mixture)
    return probs


def test_the_mixture_is_the_weighted_sum_of_the_model_and_the_counts():
    """Two rows, 1 2 3 1 2 and 1 2 4 1 2: at step 5 both have seen 3 and 4 once after 2 and after
    1 2 (order 3's context 3 1 2 is new); the mixed row is the formula's to float64's last bits."""
    tokens = [np.array([1, 2, 3, 1, 2, 3]), np.array([1, 2, 4, 1, 2, 5])]
    mixer = ngrams.NgramMixer(tokens)
    model = np.array([1.0, 0.5, 0.25, 0.75, 0.5, 0.125])
    rows = np.array([0, 1])
    for t in range(4):
        assert np.array_equal(_step(mixer, t, rows, model), np.repeat(model[None], 2, 0))  # no context seen yet
    assert not np.array_equal(_step(mixer, 4, rows, model), np.repeat(model[None], 2, 0))  # 1 was followed by 2
    probs = np.repeat(model[None], 2, 0)
    mixture = mixer.mix(5, rows, probs)
    assert [len(mixture[row].followers) for row in (0, 1)] == [2, 2]
    w0, w1, w2 = (Fraction(w, ngrams.ONE) for w in mixer.weights[2])
    total = sum(int(w * 2**32) for w in model)
    expected = [w0 * int(w * 2**32) / total for w in model]
    expected[3] += (w1 + w2) / 2
    expected[4] += (w1 + w2) / 2
    assert sum(expected) == 1 and np.array_equal(probs[0], probs[1])
    assert np.allclose(probs[0], [float(e) for e in expected], rtol=1e-15, atol=0)


def test_the_weights_learn_which_model_predicts():
    """A 5-token loop under a flat model over 50 tokens: the counts take the weight, the last
    tokens cost a fraction of a bit, and the weights stay integers summing to 2**16."""
    loop = np.tile([7, 3, 9, 3, 1], 40)
    mixer = ngrams.NgramMixer([loop])
    model = np.ones(50)
    bits = []
    for t in range(len(loop)):
        probs = _step(mixer, t, np.array([0]), model)
        bits.append(-np.log2(probs[0, loop[t]] / probs[0].sum()))
    assert sum(bits) < 0.2 * len(loop) * np.log2(50) and sum(bits[-50:]) < 0.05 * 50 * np.log2(50)
    for h, weights in mixer.weights.items():
        assert sum(weights) == ngrams.ONE and len(weights) == h + 1 and min(weights) > 0
    assert mixer.weights[4][0] < ngrams.MODEL_START // 4  # the model lost its weight where all orders are seen


def test_rows_learn_in_order_and_an_idle_row_is_untouched():
    """Two mixers fed the same steps agree weight for weight; a row not stepped keeps its model."""
    rng = np.random.default_rng(0)
    tokens = [rng.integers(0, 4, 60) for _ in range(3)]
    one, other = ngrams.NgramMixer(tokens), ngrams.NgramMixer([t.copy() for t in tokens])
    model = rng.random(4)
    model /= model.max()
    for t in range(60):
        rows = np.array([0, 2])
        assert np.array_equal(_step(one, t, rows, model), _step(other, t, rows, model))
        assert np.array_equal(_step(one, t, np.array([], dtype=np.int64), model)[1], model)
    assert one.weights == other.weights and one.weights[4] != ngrams._initial_weights(4)


def test_ngrams_shrink_a_log_and_version_3_archives_still_decode(tiny, monkeypatch):
    """The same batches coded with side models version 3 (no n-grams, as llmzip wrote them
    before) and 4: both decode, and 4 is smaller on repeated lines."""
    options = {"chunk_size": 64, "batch_size": 4, "threads": 1, "side_models": True}
    archive = Compressor(tiny, **options).compress(LOG)
    monkeypatch.setattr(versions, "SIDE_MODELS", 3)
    old = Compressor(tiny, **options).compress(LOG)
    monkeypatch.undo()
    assert container.unpack(old)[0].side_models_version == 3
    assert container.unpack(archive)[0].side_models_version == versions.SIDE_MODELS == 4
    assert len(archive) < len(old)
    for coded in (archive, old):
        assert Compressor(tiny, batch_size=7, threads=2).decompress(coded) == LOG


def test_counted_escapes_do_not_leak_into_later_steps(tiny):
    """Bytes the tokenizer cannot carry are escape symbols, which the model gives weight 0 and the
    n-grams count: 42 short chunks in one batch, where the encoder's blocks of teacher-forced
    rows and the decoder's steps must still see the same weights."""
    text = ("the rain and the sun\r\n\u041f\u0440\u0438\u0432\u0435\u0442 \U0001f600\n".encode() * 20 + b"\xff\x04") * 3
    archive = Compressor(tiny, chunk_size=32, batch_size=64, threads=1).compress(text)
    header, _ = container.unpack(archive)
    assert len(header.chunks) > 40 and header.batch_size == len(header.chunks)
    assert Compressor(tiny, threads=1).decompress(archive) == text
