"""An adaptive bias: a per-token correction of the language model's log-probabilities, learned
online from the tokens coded so far (Nacrith's "adaptive head"). Tokens the text uses more often
than the model expects gain weight, tokens it expects but the text does not use lose it. It
learns by the gradient of the code length: after coding token x under q, bias_y += rate * ([y = x] - q_y).

Integers only, so that encoder and decoder compute the same bits: the model's weights (largest
exactly 1) as integers floor(w * 2**WEIGHT_BITS), biases in 1/2**16 of a bit, and a table of
2**(k/256) built with integer square roots. A batch starts with no bias: batches code
independently, in any order and on any worker.
"""

from __future__ import annotations

from math import isqrt

import numpy as np
import torch

from ..exact.arithmetic import kernels

WEIGHT_BITS = 26  # the model's weights as integers up to 2**26
FINE_BITS = 16  # biases in units of 2**-16 bits (log2)
STEP_BITS = 8  # the table's steps: 2**-8 bits
LOW, HIGH = -8, 6  # biases are clipped to [2**-8, 2**6] times the model's weight
RATE = 9457  # 0.1 nats in units of 2**-16 bits: the learning rate (simulated: 0.05-0.2 nats)
LOWEST_BITS = 6  # the table's value at LOW: 2**6, so its steps stay distinct there
MULTIPLIER_BITS = LOWEST_BITS - LOW  # the table's value at bias 0: 2**14 (at HIGH: 2**20)
OUTPUT_SCALE = 2.0 ** -(WEIGHT_BITS + MULTIPLIER_BITS + HIGH)  # biased weights back to at most 1


def _root_table() -> np.ndarray:
    """floor(2**(LOWEST_BITS + j/256)) for j in 0..255, exactly: the 256th root of
    2**(j + 256 * LOWEST_BITS) by eight integer square roots (floor(sqrt(floor(x))) =
    floor(sqrt(x)) for integers)."""
    table = []
    for j in range(1 << STEP_BITS):
        x = 1 << (j + (LOWEST_BITS << STEP_BITS))
        for _ in range(STEP_BITS):
            x = isqrt(x)
        table.append(x)
    return np.array(table, dtype=np.int64)


_ROOTS = _root_table()
# 2**(LOWEST_BITS + k/256) for every step k from LOW to HIGH bits, bias 0 at k = -LOW * 256
MULTIPLIERS = np.concatenate([_ROOTS << octave for octave in range(HIGH - LOW)] + [_ROOTS[:1] << (HIGH - LOW)])
_MULTIPLIERS = torch.from_numpy(MULTIPLIERS)


class AdaptiveBias:
    """One batch's bias over the alphabet, shared by its chunks as the decoder steps them in
    lockstep: `apply` turns a step's rows of model weights into the weights the coder uses,
    `learn` takes the tokens coded at that step, so every row of a step sees the bias of the
    steps before. exact/csrc/side.cpp computes `apply` and its rows' share of learning in one pass per
    row; the numpy code here is the definition and the fallback."""

    def __init__(self, alphabet_size: int) -> None:
        self.bias = np.zeros(alphabet_size, dtype=np.int64)  # units of 2**-16 bits
        self.pull = np.zeros(alphabet_size, dtype=np.int64)  # this step's learning rows: sum of RATE * q
        self.kernels = kernels()

    def apply(self, weights: np.ndarray, learning: np.ndarray) -> None:
        """Rewrite rows of the model's weights (float64 [rows, alphabet], largest exactly 1) in
        place as weights * 2**bias, still at most 1: integers floor(w * 2**26) * MULTIPLIERS[bias]
        over 2**46, which float64 holds exactly. The rows where `learning` (bool
        [rows]) is true will learn from their tokens (`learn`): their pull RATE * q_y (q: the
        rewritten row, normalized) is summed now, while each row is in cache. Integer sums
        (at most 2**(26 + 20 + 16)) fit int64 and commute, so the rows' order does not matter."""
        shift, low_step = FINE_BITS - STEP_BITS, LOW << STEP_BITS
        if self.kernels:
            scales = 2.0**WEIGHT_BITS, OUTPUT_SCALE
            self.kernels.bias_apply(
                torch.from_numpy(weights), torch.from_numpy(self.bias), _MULTIPLIERS, shift, low_step, *scales,
                torch.from_numpy(learning), torch.from_numpy(self.pull), RATE,
            )  # fmt: skip
            return
        biased = np.floor(weights * 2.0**WEIGHT_BITS).astype(np.int64) * MULTIPLIERS[(self.bias >> shift) - low_step]
        np.multiply(biased, OUTPUT_SCALE, out=weights)
        biased = biased[learning]
        self.pull += (biased * RATE // biased.sum(1, keepdims=True)).sum(0)

    def learn(self, tokens: np.ndarray) -> None:
        """After one step: move each bias by RATE * ([y = token] - q_y) for the token of each
        learning row of the step's `apply` and its q."""
        low, high = LOW << FINE_BITS, HIGH << FINE_BITS
        if self.kernels:
            self.kernels.bias_learn(
                torch.from_numpy(self.pull), torch.from_numpy(tokens), torch.from_numpy(self.bias), RATE, low, high
            )
            return
        self.bias -= self.pull
        np.add.at(self.bias, tokens, RATE)
        np.clip(self.bias, low, high, out=self.bias)
        self.pull[:] = 0
