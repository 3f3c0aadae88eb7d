"""The decoder sees bit-identical probabilities to the encoder's, position by position."""

import numpy as np
import pytest
from conftest import prepared
from hypothesis import given, settings
from hypothesis import strategies as st

from llmzip.coding import decode_batch, encode_batch
from llmzip.float_predictor import FloatPredictor
from llmzip.predictor import ExactPredictor

TEXTS = (b"the rain and the sun", b"\xff\x04 bytes", "мир".encode(), b"")


class Recording:
    """Records every probability row a predictor hands out, per row."""

    def __init__(self, predictor):
        self.predictor, self.seen = predictor, {}
        self.exact, self.rows = predictor.exact, getattr(predictor, "rows", 0)

    def start(self, rows, steps, lengths=None):
        self.predictor.start(rows, steps, lengths)
        self.live = list(range(rows))

    def step(self, input_ids):
        probs = self.predictor.step(input_ids)
        for row, p in zip(self.live, probs, strict=False):
            self.seen.setdefault(row, []).append(p.copy())
        return probs

    def forced(self, input_ids, targets=None):  # row k is the k-th chunk with tokens
        for probs in self.predictor.forced(input_ids, targets):
            for row, p in zip(self.live, probs, strict=True):
                self.seen.setdefault(row, []).extend(w.copy() for w in p)
            yield probs


def predictors(loaded, kind):
    alphabet = loaded.tokenizer.alphabet_size
    if kind == "exact":
        model = prepared(loaded)
        return Recording(ExactPredictor(model, alphabet)), Recording(ExactPredictor(model, alphabet))
    return tuple(Recording(FloatPredictor(loaded.model, 5, alphabet, kind)) for _ in range(2))


@pytest.mark.parametrize(
    ("model", "kind"),
    [("tiny", "exact"), ("tiny_gemma3", "exact"), ("tiny", "fp32"), ("tiny_hf", "fp32"), ("tiny_hf", "bf16")],
)
def test_decoder_probabilities_equal_encoders(request, model, kind):
    """Exact: the encoder teacher-forces the chunks many positions at a time, the decoder steps them."""
    loaded = request.getfixturevalue(model)
    tokenizer = loaded.tokenizer
    chunks = [tokenizer.encode(t) for t in TEXTS]
    encoder, decoder = predictors(loaded, kind)
    payloads, _, ideal_bits = encode_batch(encoder, chunks, tokenizer.roles)
    decoded = decode_batch(decoder, payloads, [len(c) for c in chunks], tokenizer.roles)
    assert [list(d) for d in decoded] == [list(c) for c in chunks]
    for row, chunk in enumerate(chunks):
        if len(chunk):
            seen = encoder.seen[row][: len(chunk)], decoder.seen[row][: len(chunk)]
            assert all(np.array_equal(a, b) for a, b in zip(*seen, strict=True))
    assert ideal_bits > 0 and payloads[3] == b""


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass"))))
def test_any_input_round_trips(compressor, data):
    assert compressor.decompress(compressor.compress(data)) == data
