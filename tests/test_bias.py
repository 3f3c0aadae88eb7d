"""The adaptive bias: its exact table, what it learns, and the bits it saves on a batch."""

import numpy as np

from llmzip import bias
from llmzip.coding import decode_batch, encode_batch
from llmzip.predictor import ExactPredictor


def test_the_multiplier_table_is_exact():
    """M[k] = floor(2**(6 + j/256)) * 2**o for k = 256 o + j, the root checked by integer powers:
    r**256 <= 2**(1536 + j) < (r + 1)**256."""
    table = bias.MULTIPLIERS.tolist()
    assert len(table) == (bias.HIGH - bias.LOW) * 256 + 1
    for k, m in enumerate(table):
        octave, j = divmod(k, 256)
        root = m >> octave
        assert root << octave == m and root**256 <= 2 ** (1536 + j) < (root + 1) ** 256
    assert bias.MULTIPLIERS[-bias.LOW * 256] == 1 << bias.MULTIPLIER_BITS  # bias 0: the model's weights


def test_the_bias_learns_what_the_text_uses_and_its_rows_commute():
    weights = np.linspace(1.0, 0.5, 100)
    one, other = bias.AdaptiveBias(100), bias.AdaptiveBias(100)
    before = one.apply(weights.copy())
    for _ in range(20):
        one.learn([one.apply(weights.copy()), one.apply(weights.copy())], [7, 42])
        other.learn([other.apply(weights.copy()), other.apply(weights.copy())], [42, 7])
        assert np.array_equal(one.bias, other.bias)
    after = one.apply(weights.copy())
    q_before, q_after = before / before.sum(), after / after.sum()
    assert q_after[7] > 2 * q_before[7] and q_after[42] > 2 * q_before[42] and q_after[0] < q_before[0]
    assert one.bias.max() <= bias.HIGH << bias.FINE_BITS and one.apply(weights.copy()).max() <= 2**46


def test_the_bias_saves_bits_on_repeated_text_and_decodes(tiny, exact_tiny):
    """Tokens the tiny random model does not expect, used again and again by three chunks: the
    batch's bias learns them from every row, and the decoder recovers the tokens."""
    tokenizer = tiny.tokenizer
    chunks = [tokenizer.encode(b"zq xj zq xj " * (8 + k)) for k in range(3)]
    costs = {}
    for biased in (False, True):
        encoder = ExactPredictor(exact_tiny, tokenizer.alphabet_size)
        payloads, _, costs[biased] = encode_batch(encoder, chunks, tokenizer.roles, biased=biased)
        decoder = ExactPredictor(exact_tiny, tokenizer.alphabet_size)
        decoded = decode_batch(decoder, payloads, [len(c) for c in chunks], tokenizer.roles, biased=biased)
        assert [list(d) for d in decoded] == [list(c) for c in chunks]
    assert costs[True] < 0.7 * costs[False]
