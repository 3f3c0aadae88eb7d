"""The side models' work in one decoding step, apart from the model's forward: the adaptive bias
(apply, with its learning rows' pull, then learn), the n-gram mixture and the match model's guess
probabilities, each over a step's rows of weights shaped as the model's.

    python benchmarks/side_step.py                       # 56 rows, SmolLM2's alphabet
    python benchmarks/side_step.py --rows 64 --alphabet 262144

The weights are random (largest exactly 1, most tiny, as a model's); the n-gram mixer first
learns `--history` steps of Zipf-distributed tokens, so that its contexts have been seen as on
real text. Each figure is the fastest of `--repeats` runs on the same rows: milliseconds per
step and per row-step, beside which a decoding step's forward costs a few ms per row.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from common import command_line, machine, machine_tag, save

from llmzip.side import match
from llmzip.side.bias import AdaptiveBias
from llmzip.side.ngrams import NgramMixer


def fastest(work: Callable[[np.ndarray], object], weights: np.ndarray, repeats: int) -> float:
    """Seconds of the fastest run of work(a fresh copy of weights)."""
    best = float("inf")
    for _ in range(repeats):
        rows = weights.copy()
        started = time.perf_counter()
        work(rows)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=56)
    parser.add_argument("--alphabet", type=int, default=49152, help="SmolLM2's: 49152")
    parser.add_argument("--history", type=int, default=300, help="steps the n-gram mixer learns first")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    weights = rng.random((args.rows, args.alphabet)) ** 8
    weights[:, 0] = 1.0
    every = np.arange(args.rows)
    tokens = [(rng.zipf(1.3, args.history + 1) - 1) % args.alphabet for _ in every]

    head = AdaptiveBias(args.alphabet)
    learning = np.ones(args.rows, dtype=bool)

    def bias_step(rows: np.ndarray) -> None:
        head.apply(rows, learning)
        head.learn(np.array([t[-1] for t in tokens]))

    mixer = NgramMixer(tokens)
    for t in range(args.history):
        mixer.learn(t, every, mixer.mix(t, every, weights.copy()))
    guesses = np.array([t[-1] for t in tokens])
    seconds = {
        "bias apply and learn": fastest(bias_step, weights, args.repeats),
        "n-gram mix": fastest(lambda rows: mixer.mix(args.history, every, rows), weights, args.repeats),
        "guess probabilities": fastest(
            lambda rows: match.guess_probabilities(rows, every, guesses), weights, args.repeats
        ),
    }
    seconds["all"] = sum(seconds.values())
    place = machine()
    print(
        f"{place['cpu']} ({place['cpus']} cores, {place['cpu_capability']}), {args.rows} rows, alphabet {args.alphabet}"
    )
    for name, s in seconds.items():
        print(f"  {name:22s} {s * 1e3:7.2f} ms per step  {s * 1e6 / args.rows:7.1f} us per row-step")
    figures = {name: round(s * 1e3, 3) for name, s in seconds.items()}
    save(
        f"side_step_{args.rows}rows_{machine_tag(place)}.json",
        {"command": command_line(), "machine": place, "settings": vars(args), "ms_per_step": figures},
    )


if __name__ == "__main__":
    main()
