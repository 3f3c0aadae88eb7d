"""Side models: a match model guesses the next token from the tokens coded so far, and an
adaptive map (PAQ's APM/SSE) turns the language model's probability of that guess into the
probability that the guess is right. Integers only, so both sides compute the same bits.

A guessed position is coded as a flag (right or not) and, when the guess is wrong, as the token
under the language model with the guess taken out: exactly the code length of the mixture
p(guess) = p_right, p(other) = (1 - p_right) * lm(other) / (1 - lm(guess)).

The decoder steps a batch's chunks in lockstep, so at step t it knows every row's tokens before
t. The match model indexes all of them, row by row at each step, and the map learns from every
row's flags in the same order: repeated lines in one chunk teach the others. So the batch
grouping is part of the archive (the decoder runs the encoder's). Each batch starts a new map,
so batches code independently, on any worker (cluster.py). The weights these models see are
the adaptive bias's (bias.py), and from version 4 their mixture with token n-grams (ngrams.py).
Versions 1 and 2 (no bias; version 1 carried the map from batch to batch) were written by
llmzip 0.4's forwards only, which this llmzip refuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..exact.arithmetic import kernels

MIN_MATCH = 3  # tokens a match starts from (simulated: 2 saves 0.1-0.2% more on prose, 3 saves 3.8% more on JSON)
FIXED_SCALE = 2.0**32  # the language model's weights (at most 1) as integers floor(w * 2**32)
PROB_BITS = 16  # probabilities passed between the models: integers over 2**16
ONE = 1 << PROB_BITS
POINTS = 31  # the map's interpolation points: 15 powers of two either side of 1/2
FRACTION_BITS = 12  # position between two points
TABLE_BITS = 28  # the map's entries: probabilities over 2**28, so that slow updates do not stall
RATE = 6  # an entry moves 1/64 of the way to each outcome
LENGTH_CONTEXTS = 20  # match lengths 1..15 apart, then 16-31, 32-47, 48-63, 64+


def fixed_totals(weights: np.ndarray, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """sum_i floor(w_i * 2**32) of each of weights[rows] (float64 rows of weights at most 1), as
    int64, the floors written to out[rows] where given. Scaling by a power of two and floor are
    exact, and the floored values are integers of at most 2**32 whose sums stay below 2**53, so
    float64 adds them exactly in any order. exact/csrc/side.cpp: one pass per row, the numpy code here
    is the definition and the fallback."""
    totals = np.empty(len(rows), dtype=np.int64)
    if fused := kernels():
        floors = torch.empty(0, dtype=torch.float64) if out is None else torch.from_numpy(out)
        fused.fixed_totals(
            torch.from_numpy(weights), torch.from_numpy(rows), FIXED_SCALE, floors, torch.from_numpy(totals)
        )
        return totals
    scratch = np.empty(weights.shape[1])
    for k, row in enumerate(rows.tolist()):
        floors = scratch if out is None else out[row]
        np.floor(np.multiply(weights[row], FIXED_SCALE, out=floors), out=floors)
        totals[k] = int(floors.sum())
    return totals


def guess_probabilities(weights: np.ndarray, rows: np.ndarray, guesses: np.ndarray) -> np.ndarray:
    """The language model's probability of each guess (for weights[rows[k]], float64), over 2**16
    and clipped to [1, 2**16 - 1]: floor(w_guess * 2**32) * 2**16 // sum_i floor(w_i * 2**32)."""
    guessed = np.floor(weights[rows, guesses] * FIXED_SCALE).astype(np.int64)
    return np.clip((guessed << PROB_BITS) // fixed_totals(weights, rows), 1, ONE - 1)


def _axis(q: int) -> int:
    """Where probability q (over 2**16) sits on the map's axis [0, (POINTS - 1) << 12]: like its log-odds,
    log2(q * 2**16) for q < 1/2 and mirrored above, linear between powers of two."""
    u = min(q, ONE - q)
    e = u.bit_length() - 1
    x = (e << FRACTION_BITS) + (((u - (1 << e)) << FRACTION_BITS) >> e)
    return x if q < ONE // 2 else ((POINTS - 1) << FRACTION_BITS) - x


def _point(k: int) -> int:
    """The probability (over 2**16) at point k: the map starts as the identity."""
    return 1 << k if k <= POINTS // 2 else ONE - (1 << (POINTS - 1 - k))


@dataclass
class AdaptiveMap:
    """P(guess right) as a learned curve over the language model's probability of the guess, one
    curve per match length."""

    table: list[list[int]] = field(
        default_factory=lambda: [
            [max(_point(k), 1) << (TABLE_BITS - PROB_BITS) for k in range(POINTS)] for _ in range(LENGTH_CONTEXTS)
        ]
    )

    @staticmethod
    def context(length: int) -> int:
        return min(length, 15) if length < 16 else 16 + min((length - 16) // 16, 3)

    def predict(self, length: int, q: int) -> tuple[int, tuple[int, int, int]]:
        """P(right) over 2**16, in [1, 2**16 - 1], and where to learn its outcome."""
        x = _axis(q)
        j = min(x >> FRACTION_BITS, POINTS - 2)
        f = x - (j << FRACTION_BITS)
        row = self.table[self.context(length)]
        p = (row[j] * ((1 << FRACTION_BITS) - f) + row[j + 1] * f) >> (FRACTION_BITS + TABLE_BITS - PROB_BITS)
        return min(max(p, 1), ONE - 1), (self.context(length), j, f)

    def update(self, where: tuple[int, int, int], right: bool) -> None:
        c, j, f = where
        row = self.table[c]
        target = (ONE - 1 if right else 1) << (TABLE_BITS - PROB_BITS)
        row[j] += ((target - row[j]) * ((1 << FRACTION_BITS) - f)) >> (FRACTION_BITS + RATE)
        row[j + 1] += ((target - row[j + 1]) * f) >> (FRACTION_BITS + RATE)


class MatchModel:
    """The tokens of one batch's rows as they are coded in lockstep. Each row follows a match:
    an earlier place (any row's) whose MIN_MATCH tokens before it equal the row's last ones; the
    token there is the guess, while that token is already known at this step."""

    def __init__(self, tokens: list[np.ndarray]) -> None:
        self.tokens = tokens  # per row; the decoder fills them step by step
        self.index: dict[tuple[int, ...], tuple[int, int]] = {}  # last MIN_MATCH tokens -> (row, next position)
        self.match: list[tuple[int, int, int] | None] = [None] * len(tokens)  # (row, position, length)

    def guess(self, row: int, t: int) -> tuple[int, int] | None:
        """(token, match length) guessed for token t of `row`, if its match has one known at step t."""
        match = self.match[row]
        if match is None:
            return None
        source, position, length = match
        if position >= t or position >= len(self.tokens[source]):
            return None
        return int(self.tokens[source][position]), length

    def advance(self, t: int, rows: np.ndarray) -> None:
        """After step t: extend or drop each row's match by its token t and index its context, row by row."""
        for row in rows:
            guessed = self.guess(row, t)
            tokens = self.tokens[row]
            if guessed is not None and guessed[0] == tokens[t]:
                source, position, length = self.match[row]
                self.match[row] = (source, position + 1, length + 1)
            else:
                self.match[row] = None
            if t + 1 >= MIN_MATCH:
                key = tuple(tokens[t + 1 - MIN_MATCH : t + 1].tolist())
                if self.match[row] is None and (found := self.index.get(key)) is not None:
                    self.match[row] = (*found, 1)
                self.index[key] = (row, t + 1)
