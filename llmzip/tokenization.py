"""Bytes <-> token ids, exactly, for any byte string.

Valid UTF-8 goes through the tokenizer's own encoding. Whatever the tokenizer cannot carry
exactly (invalid UTF-8, bytes missing from its vocabulary, text its normalizer rewrites,
literal special-token text) goes byte by byte: through the vocabulary's single-byte token
where one exists, else through one of 256 escape symbols placed after the model's vocabulary.

Decoding is a table lookup per id (`id_bytes`), independent of the tokenizer library, and the
encoder checks that the lookup gives back its input before anything is coded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

N_ESCAPES = 256
TEXT_BLOCK_CHARS = 1 << 16  # the tokenizer sees at most this much text per call
_INVALID_UTF8_RUNS = re.compile("([\udc80-\udcff]+)")  # surrogateescape's stand-ins for bad bytes
_BYTE_FALLBACK_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclass(frozen=True)
class TokenRoles:
    """The ids the coder feeds the model besides the coded tokens; archives record them."""

    model_vocab: int  # symbols from here on are escapes
    start_id: int  # fed before each chunk's first token, and to rows with nothing left to code
    escape_input_id: int  # fed after an escape symbol, which has no embedding

    def model_inputs(self, symbols: np.ndarray) -> np.ndarray:
        return np.where(symbols < self.model_vocab, symbols, self.escape_input_id)


def byte_level_alphabet() -> dict[str, int]:
    """Inverse of GPT-2's byte-level alphabet (each byte shown as a printable character)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _piece_bytes(piece: str, byte_level: bool, byte_of: dict[str, int]) -> bytes:
    if byte_level:
        if all(c in byte_of for c in piece):
            return bytes(byte_of[c] for c in piece)
        return piece.encode("utf-8")
    fallback = _BYTE_FALLBACK_PIECE.fullmatch(piece)
    if fallback:
        return bytes([int(fallback.group(1), 16)])
    return piece.replace("\u2581", " ").encode("utf-8")  # SentencePiece writes spaces as U+2581


class ByteTokenizer:
    """Maps bytes to ids over an alphabet of `roles.model_vocab` tokens plus 256 escapes, and back:
    `tokenize` cuts text into ids, `id_bytes` gives each id's bytes. Made from a Hugging Face
    tokenizer (`of`), or from a saved table and its tokenizer.json run by `tokenizers` alone
    (`load`: no transformers import)."""

    def __init__(
        self, tokenize: Callable[[str], list[int]], id_bytes: list[bytes], roles: TokenRoles, tokenizer: Any = None
    ) -> None:
        self.tokenize, self.id_bytes, self.roles = tokenize, id_bytes, roles
        self.tokenizer = tokenizer  # what `tokenize` runs
        self.model_vocab = roles.model_vocab
        self.alphabet_size = self.model_vocab + N_ESCAPES
        single = {}
        for i in range(self.model_vocab - 1, -1, -1):  # reversed: the lowest id wins
            if len(id_bytes[i]) == 1:
                single[id_bytes[i][0]] = i
        self.byte_ids = np.array([single.get(b, self.model_vocab + b) for b in range(256)], dtype=np.int64)

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase, model_vocab: int) -> ByteTokenizer:
        start = next(i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, 0) if i is not None)
        unk = tokenizer.unk_token_id
        roles = TokenRoles(model_vocab, start, unk if unk is not None and unk < model_vocab else start)

        def tokenize(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

        return cls(tokenize, _id_bytes_table(tokenizer, model_vocab), roles, tokenizer)

    @classmethod
    def load(cls, tokenizer_json: Path, id_bytes: list[bytes], roles: TokenRoles) -> ByteTokenizer:
        """The tokenizer `of` made, from its backend's tokenizer.json and its saved table and roles."""
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(tokenizer_json))
        backend.encode_special_tokens = True  # what split_special_tokens=True does in transformers

        def tokenize(text: str) -> list[int]:
            return backend.encode(text, add_special_tokens=False).ids

        return cls(tokenize, id_bytes, roles, backend)

    @cached_property
    def id_nbytes(self) -> np.ndarray:
        """Byte length of each id (progress, and a chunk's original size without decoding it)."""
        return np.array([len(b) for b in self.id_bytes], dtype=np.int64)

    def decode(self, ids: np.ndarray | list[int]) -> bytes:
        table = self.id_bytes
        return b"".join([table[i] for i in ids])

    def encode(self, data: bytes) -> np.ndarray:
        """Token ids whose `decode` is exactly `data`."""
        ids: list[int] = []
        text = data.decode("utf-8", errors="surrogateescape")
        for k, piece in enumerate(_INVALID_UTF8_RUNS.split(text)):
            if k % 2:  # a run of bytes that is not valid UTF-8
                ids.extend(self.byte_ids[list(piece.encode("utf-8", errors="surrogateescape"))])
            else:
                for start, stop in _text_blocks(piece):
                    self._encode_text(piece[start:stop], ids)
        encoded = np.array(ids, dtype=np.int64)
        if self.decode(encoded) != data:  # cannot happen by construction; never code a lossy stream
            raise AssertionError("tokenization round trip failed")
        return encoded

    def _encode_text(self, text: str, out: list[int]) -> None:
        """Tokenize `text`; halve any part the tokenizer does not reproduce, down to bytes."""
        ids = self.tokenize(text)
        ids = [i for i in ids if self.id_nbytes[i]]  # every coded token carries bytes (decoders rely on it)
        if self.decode(ids) == text.encode("utf-8"):
            out.extend(ids)
        elif len(text) == 1:
            out.extend(self.byte_ids[list(text.encode("utf-8"))])
        else:
            mid = len(text) // 2
            self._encode_text(text[:mid], out)
            self._encode_text(text[mid:], out)


def _id_bytes_table(tok: PreTrainedTokenizerBase, model_vocab: int) -> list[bytes]:
    backend = getattr(tok, "backend_tokenizer", None)
    byte_level = backend is not None and "ByteLevel" in repr(backend.decoder)
    byte_of = byte_level_alphabet()
    special = set(tok.all_special_ids)
    added = tok.added_tokens_decoder
    table = [b""] * model_vocab  # special and unused ids decode to nothing
    for piece, i in tok.get_vocab().items():
        if i >= model_vocab or i in special:
            continue
        table[i] = added[i].content.encode("utf-8") if i in added else _piece_bytes(piece, byte_level, byte_of)
    return table + [bytes([b]) for b in range(N_ESCAPES)]


def _text_blocks(text: str) -> list[tuple[int, int]]:
    """Cut text into blocks of at most TEXT_BLOCK_CHARS, after a newline where there is one."""
    blocks, start = [], 0
    while start < len(text):
        stop = min(start + TEXT_BLOCK_CHARS, len(text))
        if stop < len(text):
            newline = text.rfind("\n", start, stop)
            stop = newline + 1 if newline >= start else stop
        blocks.append((start, stop))
        start = stop
    return blocks
