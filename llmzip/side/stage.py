"""The side models of one batch as one stage, stepped by the encoder and the decoder alike.

At each step t of the decoder's lockstep (the encoder runs the same steps over its teacher-forced
probabilities), for the rows that still have tokens, in row order:

1. `weigh`: the adaptive bias rewrites the language model's weights, token n-grams are mixed in
   (from version NGRAMS_FROM), and the match model guesses each row's token;
2. `flag`, for each guess: the adaptive map gives the chance that it is right, the coder codes
   whether it is (the decoder reads it), the map learns, and a wrong guess leaves the row's
   weights;
3. `learn`: the step's tokens teach the bias, the n-grams and the match model.

Encoder and decoder call these three in this order, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import versions
from .bias import AdaptiveBias
from .match import AdaptiveMap, MatchModel, guess_probabilities
from .ngrams import Mixed, NgramMixer


@dataclass(frozen=True)
class Guess:
    """The match model's guess of one row's token at one step."""

    row: int
    token: int
    length: int  # of the match it comes from
    chance: int  # the language model's probability of it (after bias and n-grams), over 2**16


class SideModels:
    """One batch's side models over `tokens` (each row's tokens as far as they are coded: the
    decoder fills them step by step) at side models `version` (versions.SIDE_MODELS_READ)."""

    def __init__(self, version: int, alphabet_size: int, tokens: list[np.ndarray]) -> None:
        self.bias = AdaptiveBias(alphabet_size)
        self.ngrams = NgramMixer(tokens) if version >= versions.NGRAMS_FROM else None
        self.match = MatchModel(tokens)
        self.map = AdaptiveMap()
        self.mixed: dict[int, Mixed] = {}  # this step's n-gram mixtures, for `learn`

    def weigh(self, t: int, rows: np.ndarray, weights: np.ndarray) -> list[Guess]:
        """Rewrite weights[rows] (the language model's, at most 1, float64) for token t in place,
        and return the guesses for token t of `rows`, in row order."""
        learning = np.zeros(len(weights), dtype=bool)
        learning[rows] = True
        self.bias.apply(weights, learning)
        self.mixed = self.ngrams.mix(t, rows, weights) if self.ngrams else {}
        found = [(int(row), guess) for row in rows if (guess := self.match.guess(row, t)) is not None]
        guessed_rows = np.array([row for row, _ in found], dtype=np.int64)
        chances = guess_probabilities(weights, guessed_rows, np.array([g for _, (g, _) in found], dtype=np.int64))
        return [Guess(row, token, length, int(c)) for (row, (token, length)), c in zip(found, chances, strict=True)]

    def flag(self, guess: Guess, weights: np.ndarray, code: Callable[[int], bool]) -> bool:
        """Whether `guess` is right: `code(p)` codes it under P(right) = p / 2**16 (encoder) or
        reads it (decoder) and returns it. The map learns it, and a wrong guess is taken out of
        its row's weights (the token is then coded without it)."""
        p, where = self.map.predict(guess.length, guess.chance)
        right = code(p)
        self.map.update(where, right)
        if not right:
            weights[guess.row, guess.token] = 0.0
        return right

    def learn(self, t: int, rows: np.ndarray, tokens: np.ndarray) -> None:
        """After step t: `tokens` (token t of each of `rows`, coded) teach the models."""
        self.bias.learn(tokens)
        if self.ngrams:
            self.ngrams.learn(t, rows, self.mixed)
        self.match.advance(t, rows)
