"""The decoder sees bit-identical probabilities to the encoder's, step by step."""

import numpy as np
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


def test_decoder_probabilities_equal_encoders(tiny):
    tokenizer = tiny.tokenizer
    chunks = [tokenizer.encode(t) for t in (b"the rain and the sun", b"\xff\x04 bytes", "мир".encode(), b"")]
    encoder = RecordingPredictor(tiny.model, 5, tokenizer.alphabet_size)
    payloads, ideal_bits = encode_batch(encoder, chunks, tokenizer.roles)
    decoder = RecordingPredictor(tiny.model, 5, tokenizer.alphabet_size)
    decoded = decode_batch(decoder, payloads, [len(c) for c in chunks], tokenizer.roles)
    assert [list(d) for d in decoded] == [list(c) for c in chunks]
    assert len(encoder.seen) == len(decoder.seen) == max(len(c) for c in chunks)
    assert all(np.array_equal(a, b) for a, b in zip(encoder.seen, decoder.seen, strict=True))
    assert ideal_bits > 0 and payloads[3] == b""


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass"))))
def test_any_input_round_trips(compressor, data):
    assert compressor.decompress(compressor.compress(data)) == data


def test_preallocated_cache_gives_the_stock_caches_floats(tiny):
    ids = tiny.tokenizer.encode(b"the rain and the sun in the morning " * 3)
    runs = []
    for preallocate in (True, False):
        predictor = Predictor(tiny.model, 4, tiny.tokenizer.alphabet_size)
        predictor.preallocate = preallocate
        predictor.reset(len(ids))
        runs.append([predictor.step(np.full(4, i)).copy() for i in ids])
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))
