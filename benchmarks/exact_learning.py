"""Dynamic evaluation in the exact model (llmzip/exact/learning.py): the language model's code length
on a file (bits per byte, what an ideal coder would write from its probabilities), with the
weights as prepared and with some of them learning after each segment: every block and the head,
or the head and the top few blocks (the backward stops below them). The language model alone:
no side models.

    python benchmarks/exact_learning.py alice29.txt --bytes 30000
    python benchmarks/exact_learning.py alice29.txt --bytes 30000 --rows 8 --blocks none,0,4,8,all

The file is cut into `--rows` sequences coded side by side (a level's batch), each token
attending the `--window` tokens before it and its sequence's first 4 (attention sinks); the
forward's and the learning steps' seconds are timed apart. Results:
benchmarks/results/exact_learning_<model>_<file>[_<bytes>][_rows<rows>].json.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from common import load_input, machine, markdown_table, save

from llmzip import load_model
from llmzip.aliases import DEFAULT_MODEL
from llmzip.exact import learning
from llmzip.exact.arithmetic import softmax_weights
from llmzip.levels import SINK_TOKENS
from llmzip.models import exact_model


def code_length(model, ids: torch.Tensor, window: int, learner: learning.Learner | None) -> tuple[float, float, float]:
    """Bits of ids[:, 1:] given ids[:, 0], segment by segment, the learner (if any) stepping after
    each; and the seconds of the forwards and of the learning steps."""
    rows, length = ids.shape
    cache = model.new_cache(rows, length, window, SINK_TOKENS)
    bits = forward_seconds = learning_seconds = 0.0
    for start in range(0, length - 1, learning.SEGMENT):
        end = min(start + learning.SEGMENT, length - 1)
        started = time.perf_counter()
        tape = learner.tape() if learner else None
        logits = model.forward(model.embed[ids[:, start:end]], start, cache, tape)
        targets = ids[:, start + 1 : end + 1]
        weights = softmax_weights(logits.flatten(0, 1)).double()
        q = weights[torch.arange(len(weights)), targets.flatten()] / weights.sum(-1)
        bits -= float(torch.log2(q).sum())
        learned = time.perf_counter()
        forward_seconds += learned - started
        if learner:
            learner.learn(tape, logits, targets)
            learning_seconds += time.perf_counter() - learned
    return bits, forward_seconds, learning_seconds


def learns(blocks: str) -> str:
    """What a `--blocks` entry learns, in words."""
    named = {"none": "nothing (prepared weights)", "all": "every block and the head", "0": "the head only"}
    return named.get(blocks, f"the top {blocks} blocks and the head")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="a path, or a file of the corpus folder")
    parser.add_argument("--bytes", type=int, default=None, help="only the first BYTES")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--window", type=int, default=4096, help="tokens each token attends (level 9's)")
    parser.add_argument("--rows", type=int, default=1, help="sequences the file is cut into, coded side by side")
    parser.add_argument(
        "--blocks", default="none,all", help="what learns, comma-separated: none, all, or the top N blocks and the head"
    )
    args = parser.parse_args()
    name, data = load_input(args.file, args.bytes)
    loaded = load_model(args.model)
    model = exact_model(loaded, torch.device("cpu"))
    tokens = loaded.tokenizer.encode(data).clip(max=model.config.vocab - 1)
    piece = len(tokens) // args.rows  # the last len(tokens) % rows tokens are left out
    start = np.full((args.rows, 1), loaded.tokenizer.roles.start_id)
    ids = torch.from_numpy(np.concatenate([start, tokens[: piece * args.rows].reshape(args.rows, piece)], 1))
    coded = tokens[: piece * args.rows]
    coded_bytes = int(loaded.tokenizer.id_nbytes[coded].sum())
    maps = type(model).projection_maps(loaded.model, model.config)
    code_length(model, ids[:, : learning.SEGMENT + 1], args.window, None)  # untimed: the weights paged in
    rows = []
    for what in args.blocks.split(","):
        learner = None if what == "none" else learning.Learner(model, maps, None if what == "all" else int(what))
        bits, forward_seconds, learning_seconds = code_length(
            model if learner is None else learner.model, ids, args.window, learner
        )
        rows.append({"learns": learns(what), "blocks": what, "bits_per_byte": round(bits / coded_bytes, 4),
                     "forward_seconds": round(forward_seconds, 1),
                     "learning_seconds": round(learning_seconds, 1)})  # fmt: skip
        print(rows[-1], flush=True)
        del learner
    prepared = next((row["bits_per_byte"] for row in rows if row["blocks"] == "none"), None)
    for row in rows:
        row["vs_prepared_percent"] = None if prepared is None else round(100 * (row["bits_per_byte"] / prepared - 1), 2)
    settings = {"model": args.model, "bytes": coded_bytes, "tokens": len(coded), "rows": args.rows,
                "window": args.window, "sinks": SINK_TOKENS, "segment": learning.SEGMENT, "rate": learning.RATE,
                "decay": learning.DECAY, "threads": torch.get_num_threads()}  # fmt: skip
    result = {"machine": machine(), "settings": settings, "file": name, "rows": rows}
    parts = [args.model, name] + [str(args.bytes)] * bool(args.bytes) + [f"rows{args.rows}"] * (args.rows > 1)
    save(f"exact_learning_{'_'.join(parts)}.json", result)
    columns = ["learns", "bits_per_byte", "vs_prepared_percent", "forward_seconds", "learning_seconds"]
    print(markdown_table(rows, columns))
    assert all(math.isfinite(row["bits_per_byte"]) for row in rows)


if __name__ == "__main__":
    main()
