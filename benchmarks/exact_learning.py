"""Dynamic evaluation in the exact model (llmzip/exact/learning.py): the language model's code length
on a file (bits per byte, what an ideal coder would write from its probabilities), with the
weights as prepared and with the weights learning after each segment. The language model
alone: no side models.

    python benchmarks/exact_learning.py alice29.txt --bytes 30000
    python benchmarks/exact_learning.py alice29.txt

The file is one sequence, as level 9 codes it: each token attends the `--window` tokens before
it and the first 4 (attention sinks). Results: benchmarks/results/exact_learning_<model>_<file>[_<bytes>].json.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from common import load_input, machine, markdown_table, save

from llmzip import learning, load_model
from llmzip.aliases import DEFAULT_MODEL
from llmzip.exact.arithmetic import softmax_weights
from llmzip.exact.llama import Tape
from llmzip.levels import SINK_TOKENS
from llmzip.models import exact_model


def code_length(model, ids: torch.Tensor, window: int, learner: learning.Learner | None) -> float:
    """Bits of ids[1:] given ids[0], segment by segment; the learner, if any, steps after each."""
    cache = model.new_cache(1, len(ids), window, SINK_TOKENS)
    bits = 0.0
    for start in range(0, len(ids) - 1, learning.SEGMENT):
        end = min(start + learning.SEGMENT, len(ids) - 1)
        tape = Tape() if learner else None
        logits = model.forward(model.embed[ids[None, start:end]], start, cache, tape)
        targets = ids[None, start + 1 : end + 1]
        weights = softmax_weights(logits[0]).double()
        q = weights[torch.arange(end - start), targets[0]] / weights.sum(-1)
        bits -= float(torch.log2(q).sum())
        if learner:
            learner.learn(tape, logits, targets)
    return bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="a path, or a file of the corpus folder")
    parser.add_argument("--bytes", type=int, default=None, help="only the first BYTES")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--window", type=int, default=4096, help="tokens each token attends (level 9's)")
    parser.add_argument("--rates", default=str(learning.RATE), help="comma-separated rates to compare")
    args = parser.parse_args()
    name, data = load_input(args.file, args.bytes)
    loaded = load_model(args.model)
    model = exact_model(loaded, torch.device("cpu"))
    ids = loaded.tokenizer.encode(data)
    ids = torch.from_numpy(np.concatenate([[loaded.tokenizer.roles.start_id], ids]).clip(max=model.config.vocab - 1))
    learner = learning.Learner(model, type(model).projection_maps(loaded.model, model.config))
    rows = []
    for rate in [None, *map(float, args.rates.split(","))]:
        learner.reset()
        learning.RATE = rate or learning.RATE
        started = time.perf_counter()
        bits = code_length(learner.model if rate else model, ids, args.window, learner if rate else None)
        seconds = time.perf_counter() - started
        rows.append({"weights": f"learning, rate {rate}" if rate else "prepared", "rate": rate,
                     "bits_per_byte": round(bits / len(data), 4), "seconds": round(seconds)})  # fmt: skip
        print(rows[-1], flush=True)
    for row in rows:
        row["vs_prepared_percent"] = round(100 * (row["bits_per_byte"] / rows[0]["bits_per_byte"] - 1), 2)
    settings = {"model": args.model, "bytes": len(data), "tokens": len(ids) - 1, "window": args.window,
                "sinks": SINK_TOKENS, "segment": learning.SEGMENT, "decay": learning.DECAY,
                "threads": torch.get_num_threads()}  # fmt: skip
    result = {"machine": machine(), "settings": settings, "file": name, "rows": rows}
    parts = [args.model, name] + [str(args.bytes)] * bool(args.bytes)
    save(f"exact_learning_{'_'.join(parts)}.json", result)
    print(markdown_table(rows, ["weights", "bits_per_byte", "vs_prepared_percent", "seconds"]))
    assert math.isfinite(rows[-1]["bits_per_byte"])


if __name__ == "__main__":
    main()
