"""The decoder sees bit-identical probabilities to the encoder's, step by step."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmzip.coding import decode_batch, encode_batch
from llmzip.predictor import Predictor


class RecordingPredictor(Predictor):
    def __init__(self, *args):
        super().__init__(*args)
        self.seen: list[np.ndarray] = []

    def step(self, input_ids):
        probs = super().step(input_ids)
        self.seen.append(probs.copy())
        return probs


@pytest.mark.parametrize("model", ["tiny", "tiny_hf"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_decoder_probabilities_equal_encoders(request, model, precision):
    loaded = request.getfixturevalue(model)
    tokenizer = loaded.tokenizer
    chunks = [tokenizer.encode(t) for t in (b"the rain and the sun", b"\xff\x04 bytes", "мир".encode(), b"")]
    encoder = RecordingPredictor(loaded.model, 5, tokenizer.alphabet_size, precision)
    payloads, ideal_bits = encode_batch(encoder, chunks, tokenizer.roles)
    decoder = RecordingPredictor(loaded.model, 5, tokenizer.alphabet_size, precision)
    decoded = decode_batch(decoder, payloads, [len(c) for c in chunks], tokenizer.roles)
    assert [list(d) for d in decoded] == [list(c) for c in chunks]
    assert len(encoder.seen) == len(decoder.seen) == max(len(c) for c in chunks)
    assert all(np.array_equal(a, b) for a, b in zip(encoder.seen, decoder.seen, strict=True))
    assert ideal_bits > 0 and payloads[3] == b""


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass"))))
def test_any_input_round_trips(compressor, data):
    assert compressor.decompress(compressor.compress(data)) == data
