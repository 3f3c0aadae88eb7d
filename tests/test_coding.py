"""The decoder sees bit-identical probabilities to the encoder's, position by position."""

import numpy as np
import pytest
from conftest import prepared
from hypothesis import given, settings
from hypothesis import strategies as st

from llmzip import versions
from llmzip.coding import carry_flags, decode_batch, encode_batch
from llmzip.drafts import Lookup
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


class Counting(ExactPredictor):
    """An exact predictor that counts its forwards and the positions they score."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.forwards, self.positions = 0, 0

    def step(self, input_ids):
        self.forwards, self.positions = self.forwards + 1, self.positions + 1
        return super().step(input_ids)

    def score(self, input_ids):
        self.forwards, self.positions = self.forwards + 1, self.positions + input_ids.shape[1]
        return super().score(input_ids)


class Undrafted(Counting):
    def drafts(self, rows):
        return 0


@pytest.mark.parametrize("side_models", [0, versions.SIDE_MODELS])
def test_drafted_decoding_settles_several_positions_per_forward(tiny, side_models):
    """Rows of repetitive lines (one longer, one row empty): the decoder scores each row's drafted
    tokens in one forward (one each while two rows step, three once one does) and keeps them to
    the first wrong one; it decodes what was coded, in fewer forwards than steps, and with drafts
    turned off in one forward per step."""
    tokenizer, model = tiny.tokenizer, prepared(tiny)
    texts = [b"".join(b"GET /index.html 200 %d\n" % (i % 7) for i in range(30)), b"POST /api 201\n" * 8, b""]
    chunks = [tokenizer.encode(text) for text in texts]
    encoder = ExactPredictor(model, tokenizer.alphabet_size)
    payloads, flags, _ = encode_batch(encoder, chunks, tokenizer.roles, None, side_models)
    lengths = [len(c) for c in chunks]
    if side_models:
        payloads = carry_flags(payloads, flags, lengths)
    runs = {}
    for drafting in (True, False):
        decoder = (Counting if drafting else Undrafted)(model, tokenizer.alphabet_size)
        decoded = decode_batch(decoder, payloads, lengths, tokenizer.roles, None, side_models)
        assert [list(d) for d in decoded] == [list(c) for c in chunks]
        runs[drafting] = decoder.forwards, decoder.positions
    steps = max(lengths)
    assert runs[False] == (steps, steps)
    assert runs[True][0] < steps / 2 and runs[True][1] > steps


def test_lookup_drafts_what_followed_the_latest_earlier_occurrence():
    """A row's drafts are the tokens after the latest earlier occurrence of its last 4 to 6
    tokens (longest first), never reaching past what is decoded, never the suffix itself."""
    lookup = Lookup([np.array([7, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 6, 7, 1, 2, 3, 4, 0, 0])])
    assert list(lookup.draft(0, 5, 4)) == []  # (1, 2, 3, 4) occurs only as the suffix
    assert list(lookup.draft(0, 11, 4)) == [5, 0, 1, 2]  # after (1, 2, 3, 4) ending at 5
    assert list(lookup.draft(0, 17, 4)) == [5, 0, 1, 2]  # (7, 1, 2, 3, 4) at 5 before (1, 2, 3, 4)'s latest, at 11
    assert list(Lookup([np.array([1, 2, 3, 4, 1, 2, 3, 4, 0, 0])]).draft(0, 8, 6)) == [1, 2, 3, 4]  # decoded only
