"""Steering: a soft prompt the model reads before every chunk, carried in the archive header.

Variants (the CLI's `--steer`):
- `none`: chunks start cold, after the start token.
- `text:STRING`: the tokens of a fixed string (the string is stored).
- `random:N`: N static random vectors in embedding space (seed and scale are stored).
- `trained:N`: N vectors trained with Adam on the file's own chunks to minimise their code
  length (`training`), then quantized and coded by `hyperprior`; what is stored, and what
  both sides feed the model, is the dequantized vector.

A prefix is either token ids (text) or float32 vectors [N, hidden] entering through the
model's input embeddings; `Predictor.reset` feeds it to every row before the start token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..container import Reader, string_bytes, varint
from ..errors import CorruptArchiveError, InvalidOptionError
from ..tokenization import ByteTokenizer
from . import hyperprior

KINDS = ("none", "text", "random", "trained")
MAX_VECTORS = 256


@dataclass(frozen=True)
class Steering:
    """What the header stores of a steering variant; `prefix` rebuilds what the model reads."""

    kind: str = "none"
    text: str = ""  # text
    seed: int = 0  # random
    scale: float = 0.0  # random: standard deviation of each coordinate
    count: int = 0  # random, trained: number of vectors
    coded: hyperprior.CodedVector | None = None  # trained

    def prefix(self, tokenizer: ByteTokenizer, hidden: int) -> np.ndarray | None:
        if self.kind == "text":
            return tokenizer.roles.model_inputs(tokenizer.encode(self.text.encode("utf-8")))
        if self.kind == "random":
            return random_vectors(self.seed, self.count, hidden, self.scale)
        if self.kind == "trained":
            values = self.coded.values
            if values.size != self.count * hidden:
                raise CorruptArchiveError(f"steering holds {values.size} values, not {self.count} x {hidden}")
            return values.reshape(self.count, hidden).copy()
        return None

    def describe(self) -> str:
        if self.kind == "text":
            return f"text:{self.text!r}"
        return self.kind if self.kind == "none" else f"{self.kind}:{self.count}"

    def to_bytes(self) -> bytes:
        """The header payload (empty for none)."""
        if self.kind == "none":
            return b""
        head = bytes([KINDS.index(self.kind)])
        if self.kind == "text":
            return head + string_bytes(self.text)
        if self.kind == "random":
            return head + varint(self.count) + varint(self.seed) + np.float32(self.scale).tobytes()
        return head + varint(self.count) + self.coded.data

    @classmethod
    def from_bytes(cls, data: bytes) -> Steering:
        if not data:
            return cls()
        r = Reader(data)
        kind = r.take(1)[0]
        if not 1 <= kind < len(KINDS):
            raise CorruptArchiveError(f"unknown steering variant {kind}")
        if KINDS[kind] == "text":
            steering = cls("text", text=r.string())
        elif KINDS[kind] == "random":
            count, seed, scale = r.varint(MAX_VECTORS), r.varint((1 << 32) - 1), r.f32()
            if not (count >= 1 and math.isfinite(scale)):
                raise CorruptArchiveError("bad random steering parameters")
            steering = cls("random", seed=seed, scale=scale, count=count)
        else:
            count, rest = r.varint(MAX_VECTORS), data[r.pos :]
            values = hyperprior.decode(rest)
            return cls("trained", count=count, coded=hyperprior.CodedVector(rest, values))
        if not r.at_end():
            raise CorruptArchiveError("steering payload has trailing bytes")
        return steering


def random_vectors(seed: int, count: int, hidden: int, scale: float) -> np.ndarray:
    """Static random vectors, uniform with standard deviation `scale`: integers from numpy's
    legacy generator (a stream numpy keeps fixed forever), scaled by one correctly rounded
    product each. (Its normal variates go through libm's log, which may differ by CPU.)"""
    integers = np.random.RandomState(seed).randint(-(2**15), 2**15, (count, hidden))
    return (integers * (float(np.float32(scale)) * math.sqrt(3) / 2**15)).astype(np.float32)


@dataclass(frozen=True)
class TrainOptions:
    """How `trained:N` vectors are fitted (only the encoder runs this; nothing here is stored)."""

    steps: int = 100  # Adam steps
    lr: float = 0.03  # enwik5, 40 steps: loss 2.829 -> 2.741 nats (0.003: -> 2.789)
    chunks: int = 8  # training chunks, spread evenly over the file
    tokens: int = 256  # leading tokens of each chunk trained on (the positions a prefix helps most)
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.steps >= 0 and self.lr > 0 and self.chunks >= 1 and self.tokens >= 1):
            raise InvalidOptionError("steering training needs steps >= 0, lr > 0, chunks >= 1, tokens >= 1")


def parse_spec(spec: str) -> tuple[str, str | int]:
    """`none`, `text:STRING`, `random:N`, `trained:N`, `auto` (= `auto:1`) or `auto:N` -> (kind, argument)."""
    kind, _, arg = spec.partition(":")
    if spec in ("none", "auto"):
        return spec, 1 if spec == "auto" else 0
    if kind == "text" and arg:
        return kind, arg
    if kind in ("random", "trained", "auto") and arg.isdigit() and 1 <= int(arg) <= MAX_VECTORS:
        return kind, int(arg)
    raise InvalidOptionError(
        f"bad steering {spec!r}: use none, text:STRING, random:N, trained:N, auto or auto:N (1 <= N <= {MAX_VECTORS})"
    )
