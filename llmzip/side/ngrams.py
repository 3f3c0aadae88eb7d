"""Token n-grams mixed with the language model (side models from version 4): what followed each
context of 1 to 4 tokens in a batch's rows so far, and an online linear mixer of those counts
with the model's distribution (as Nacrith and PAQ's order-n models do; a match model alone
only guesses one token).

    p(x) = (w_0 * lm(x) + sum over orders k seen of w_k * count_k(x) / n_k) / 2**16

An order takes part when its context has been seen; then every lower order's has too (its
context is a suffix), so the orders taking part are 1..h and each h has its own weights, learnt
after every token as the gradient of log p(x) on the simplex (an EM step, as in Bayesian
mixtures): w_j += w_j * (p_j(x) - p(x)) / p(x) / 2**RATE_BITS, floored at FLOOR, then scaled back
to sum 2**16.

Rows are stepped in lockstep, as the decoder does: the mixer sees the tokens of every row
before step t, then learns from step t's rows in row order. Learning is integer arithmetic; the
mixed row is float64 made by single correctly rounded operations in a fixed order (scale the
model's row, then add each order's counts), so every IEEE machine computes the same bits. Sums
are taken only over integers below 2**53, which float64 adds exactly in any order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .match import fixed_totals  # the model's weights (at most 1) as integers floor(w * 2**32), summed

ORDERS = (1, 2, 3, 4)  # context lengths in tokens (simulated on enwik5: 5 and 6 add 0.02%)
WEIGHT_BITS = 16  # each order's weights are integers summing to 2**16
ONE = 1 << WEIGHT_BITS
MODEL_START = ONE * 9 // 10  # the language model's first weight; the orders share the rest
RATE_BITS = 6  # learning rate 1/64 (simulated: 1/100 to 1/20 within 0.05%)
FLOOR = ONE >> 10  # no weight falls below 1/1024: a model that was wrong can come back
PROB_BITS = 32  # probabilities while learning: integers over 2**32


class Following:
    """What followed one context: the tokens in order of first sight (`ids`), their counts
    (integers in float64, as the mixture adds them), which slot holds each token, and the total.
    Arrays that grow in place: a step's mixture reads them as they are, without a rebuild."""

    def __init__(self) -> None:
        self.total = 0
        self.slots: dict[int, int] = {}
        self.ids = np.empty(4, dtype=np.int64)
        self.counts = np.empty(4, dtype=np.float64)

    def count(self, token: int) -> int:
        slot = self.slots.get(token)
        return 0 if slot is None else int(self.counts[slot])

    def add(self, token: int) -> None:
        self.total += 1
        if (slot := self.slots.get(token)) is None:
            slot = self.slots[token] = len(self.slots)
            if slot == len(self.ids):
                self.ids, self.counts = np.resize(self.ids, 2 * slot), np.resize(self.counts, 2 * slot)
            self.ids[slot], self.counts[slot] = token, 0.0
        self.counts[slot] += 1.0


@dataclass
class Mixed:
    """One row's mixture at one step, kept until its token is known."""

    model: np.ndarray  # the model's weights as integers floor(w * 2**32), float64 (NgramMixer.models' row)
    model_total: int
    followers: list[Following]  # orders 1..h


def _initial_weights(orders: int) -> list[int]:
    """The orders share what MODEL_START leaves equally; the model takes the rest (MODEL_START and the remainder)."""
    share = (ONE - MODEL_START) // orders
    return [ONE - share * orders] + [share] * orders


class NgramMixer:
    """One batch's n-gram counts and mixing weights. `tokens[row]` holds each row's tokens as
    far as they are coded; `mix` rewrites a step's rows of model weights as the mixture, and
    `learn` takes the step's tokens."""

    def __init__(self, tokens: list[np.ndarray]) -> None:
        self.tokens = tokens
        self.seen: list[dict[tuple[int, ...], Following]] = [{} for _ in ORDERS]
        self.weights = {h: _initial_weights(h) for h in range(1, len(ORDERS) + 1)}  # per highest order seen
        self.models = np.empty((len(tokens), 0))  # each row's model weights at this step, as integers

    def _followers(self, row: int, t: int) -> list[Following]:
        """What followed token t's contexts in `row`, order 1 up to the first unseen."""
        found = []
        for order, seen in zip(ORDERS, self.seen, strict=True):
            if t < order or (following := seen.get(tuple(self.tokens[row][t - order : t].tolist()))) is None:
                break
            found.append(following)
        return found

    def mix(self, t: int, rows: np.ndarray, probs: np.ndarray) -> dict[int, Mixed]:
        """Rewrite probs[row] (the model's weights for token t of each of `rows`, at most 1) in
        place as the mixture, where a context was seen; return what `learn` needs."""
        if self.models.shape[1] != probs.shape[1]:
            self.models = np.empty((len(self.tokens), probs.shape[1]))
        found = {row: followers for row in rows.tolist() if (followers := self._followers(row, t))}
        listed = np.fromiter(found, dtype=np.int64, count=len(found))
        mixed = {}
        for row, model_total in zip(found, fixed_totals(probs, listed, self.models).tolist(), strict=True):
            followers, model = found[row], self.models[row]
            weights = self.weights[len(followers)]
            np.multiply(model, weights[0] / model_total / ONE, out=probs[row])
            for weight, following in zip(weights[1:], followers, strict=True):
                seen = len(following.slots)
                probs[row, following.ids[:seen]] += following.counts[:seen] * (weight / following.total / ONE)
            mixed[row] = Mixed(model, model_total, followers)
        return mixed

    def learn(self, t: int, rows: np.ndarray, mixed: dict[int, Mixed]) -> None:
        """After step t: move the weights of each mixed row by its token, then count every row's
        token t after its contexts, rows in order."""
        for row, state in mixed.items():
            token = int(self.tokens[row][t])
            chances = [(int(state.model[token]) << PROB_BITS) // state.model_total]
            chances += [(f.count(token) << PROB_BITS) // f.total for f in state.followers]
            weights = self.weights[len(state.followers)]
            p = max(sum(w * c for w, c in zip(weights, chances, strict=True)) >> WEIGHT_BITS, 1)
            moved = [max(w + w * (c - p) // (p << RATE_BITS), FLOOR) for w, c in zip(weights, chances, strict=True)]
            total = sum(moved)
            moved = [w * ONE // total for w in moved]
            moved[0] += ONE - sum(moved)
            weights[:] = moved
        for row in rows.tolist():
            token = int(self.tokens[row][t])
            for order, seen in zip(ORDERS, self.seen, strict=True):
                if t < order:
                    break
                context = tuple(self.tokens[row][t - order : t].tolist())
                if (following := seen.get(context)) is None:
                    following = seen[context] = Following()
                following.add(token)
