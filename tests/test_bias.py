"""The adaptive bias: its exact table, what it learns, and the bits it saves on a batch."""

import numpy as np

from llmzip.coding import carry_flags, decode_batch, encode_batch
from llmzip.predictor import ExactPredictor
from llmzip.side import bias


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
    weights = np.linspace(1.0, 0.5, 100)[None]
    one, other = bias.AdaptiveBias(100), bias.AdaptiveBias(100)
    none = np.zeros(1, dtype=bool)
    before = weights.copy()
    one.apply(before, none)
    for _ in range(20):
        one.apply(weights.repeat(3, 0), np.array([True, True, False]))  # the third row idle
        one.learn(np.array([7, 42]))
        other.apply(weights.repeat(2, 0), np.array([True, True]))
        other.learn(np.array([42, 7]))
        assert np.array_equal(one.bias, other.bias)
    after = weights.copy()
    one.apply(after, none)
    q_before, q_after = before[0] / before.sum(), after[0] / after.sum()
    assert q_after[7] > 2 * q_before[7] and q_after[42] > 2 * q_before[42] and q_after[0] < q_before[0]
    assert one.bias.max() <= bias.HIGH << bias.FINE_BITS and after.max() <= 1.0


def test_the_kernels_give_the_numpy_codes_bits():
    """Random weights (largest 1, some 0), biases anywhere up to both clips, strided rows."""
    rng = np.random.default_rng(0)
    alphabet, low, high = 5000, bias.LOW << bias.FINE_BITS, bias.HIGH << bias.FINE_BITS
    fused, numpy_only = bias.AdaptiveBias(alphabet), bias.AdaptiveBias(alphabet)
    assert fused.kernels is not None
    numpy_only.kernels = None
    start = rng.integers(low, high + 1, alphabet)
    start[:4] = low, high, low + 1, high - 1
    fused.bias[:], numpy_only.bias[:] = start, start
    for step in range(20):
        block = rng.random((4, 3, alphabet)) ** 8 / 2**20  # tokens 0 and 2 take most of the weight
        block[:, :, 0], block[:, :, 1], block[:, :, 2] = 1.0, 0.0, 1.0
        tokens = rng.integers(5, 50, 4) if step % 3 else np.array([1, -1, 1, 3])  # -1: an idle row
        results = []
        for head in (fused, numpy_only):
            weights = block.copy()
            head.apply(weights[:, 1], tokens >= 0)  # a strided view, rewritten in place
            head.learn(tokens[tokens >= 0])
            results.append((weights, head.bias.copy()))
        for a, b in zip(*results, strict=True):
            assert np.array_equal(a, b)
    assert fused.bias.max() == high and fused.bias.min() == low


def test_side_models_save_bits_on_repeated_text_and_decode(tiny, exact_tiny):
    """Tokens the tiny random model does not expect, used again and again by three chunks: the
    batch's side models of version 3 (bias, match model and map) learn them from every row, and
    the decoder recovers the tokens."""
    tokenizer = tiny.tokenizer
    chunks = [tokenizer.encode(b"zq xj zq xj " * (8 + k)) for k in range(3)]
    costs = {}
    for version in (0, 3):
        encoder = ExactPredictor(exact_tiny, tokenizer.alphabet_size)
        payloads, flags, costs[version] = encode_batch(encoder, chunks, tokenizer.roles, side_models=version)
        decoder = ExactPredictor(exact_tiny, tokenizer.alphabet_size)
        payloads = carry_flags(payloads, flags, [len(c) for c in chunks]) if version else payloads
        decoded = decode_batch(decoder, payloads, [len(c) for c in chunks], tokenizer.roles, side_models=version)
        assert [list(d) for d in decoded] == [list(c) for c in chunks]
    assert costs[3] < 0.7 * costs[0]
