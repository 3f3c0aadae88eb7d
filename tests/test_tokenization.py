"""Any byte string maps to token ids and back exactly, through both tokenizer families."""

import numpy as np
import pytest
from conftest import MISSING_BYTES

SAMPLES = [
    b"",
    b"a",
    bytes(range(256)),
    b"\xff\xfe\x80 invalid \xc3\x28 utf-8 \xed\xa0\x80 surrogate",
    b"line one\r\nline two\r\n\r\nlone cr\rend",
    "emoji 😀👍🏽 and U+2581 \u2581 and NBSP \u00a0 and BOM \ufeff".encode(),
    "Привет, мир! the rain in Spain".encode(),
    b"<|endoftext|> literal special token text <bos> <unk>",
    b"\x00NUL\x00 and control \x04\x1d bytes",
    b"\n" + b" " * 48 + b"deep indent",
]


@pytest.mark.parametrize("family", ["tiny", "tiny_fallback"])
@pytest.mark.parametrize("data", SAMPLES, ids=range(len(SAMPLES)))
def test_round_trip(family, data, request):
    tokenizer = request.getfixturevalue(family).tokenizer
    ids = tokenizer.encode(data)
    assert tokenizer.decode(ids) == data
    assert ids.dtype == np.int64 and (ids < tokenizer.alphabet_size).all()


def test_missing_byte_tokens_use_escapes(tiny):
    tokenizer = tiny.tokenizer
    for b in MISSING_BYTES:
        assert tokenizer.byte_ids[b] == tokenizer.model_vocab + b
    ids = tokenizer.encode(b"a\x04b")
    assert tokenizer.model_vocab + 0x04 in ids


def test_text_uses_merged_tokens(tiny, tiny_fallback):
    for model in (tiny, tiny_fallback):
        data = b"the rain and the sun"
        ids = model.tokenizer.encode(data)
        assert len(ids) < len(data), "normal text must go through the tokenizer's merges"


def test_escapes_enter_the_model_as_a_real_token(tiny):
    roles = tiny.tokenizer.roles
    symbols = np.array([5, roles.model_vocab + 4, roles.model_vocab + 255])
    assert (roles.model_inputs(symbols) == [5, roles.escape_input_id, roles.escape_input_id]).all()
