"""What online adaptation of the model itself would save: dynamic evaluation (Krause et al.
2018, 2019), simulated with the float model. Not llmzip's coder: no side models, no exact
arithmetic; it measures the language model's code length (bits per byte, what an ideal coder
would write) on a file, cold and adapted, to size the idea before building it exactly.

    python benchmarks/dynamic_eval.py alice29.txt
    python benchmarks/dynamic_eval.py enwik5

Variants, each over the same segments (128 tokens; each token sees the 1024 before it and the
first 4 of its block, as attention sinks; blocks of 8192 positions, the model's context,
restart cold, since sinks farther away than the context break its attention):
- `model`: the weights as loaded, nothing learned;
- `bias`: plus a per-token bias of the logits learned from each segment (the float analogue of
  llmzip's adaptive bias, bias.py);
- `weights`: after each segment, one SGD step on every weight against that segment's code
  length, carried on through the file (the decoder could take the same step after decoding it);
- `weights+bias`: both.
Results: benchmarks/results/dynamic_eval_<model>_<file>.json.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from common import load_input, machine, markdown_table, save
from transformers import DynamicCache

from llmzip import load_model
from llmzip.aliases import DEFAULT_MODEL

SEGMENT = 128  # tokens scored, then learned from
CONTEXT = 1024  # earlier tokens each segment attends, besides the sinks
SINKS = 4
BLOCK = 8192  # positions before a cold restart
WEIGHT_RATE = 1e-4  # SGD on the summed code length in nats (alice29.txt's first 8000 tokens: 3e-5 worse, 3e-4 diverges)
BIAS_RATE = 0.06  # per segment of 128 tokens (alice29.txt: 0.0125 and 0.03 worse)


def code_lengths(model: torch.nn.Module, ids: torch.Tensor, weight_rate: float, bias_rate: float) -> dict[str, float]:
    """Bits of ids[1:] given ids[0] as the start token: without the bias, and with it where it
    learns (beside the weights; with a weight rate, the weights learn from the biased code length)."""
    vocab = model.get_output_embeddings().weight.shape[0]
    bias = torch.zeros(vocab)
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(weight_rate > 0)
    bits = {"plain": 0.0} | ({"biased": 0.0} if bias_rate else {})
    past: list[tuple[torch.Tensor, torch.Tensor]] = []
    for start in range(0, len(ids) - 1, SEGMENT):
        length = min(SEGMENT, len(ids) - 1 - start)
        targets = ids[start + 1 : start + 1 + length]
        if start % BLOCK == 0:
            past = []
        cache = DynamicCache()
        for layer, (k, v) in enumerate(past):
            cache.update(k, v, layer)
        positions = torch.arange(start % BLOCK, start % BLOCK + length)[None]
        with torch.set_grad_enabled(weight_rate > 0):
            logits = model(ids[None, start : start + length], cache=cache, position_ids=positions).logits[0].float()
            scored = {"plain": torch.log_softmax(logits, -1)}
            if bias_rate:
                scored["biased"] = torch.log_softmax(logits + bias, -1)
            rows = torch.arange(length)
            loss = -scored["biased" if bias_rate else "plain"][rows, targets].sum()
        for kind, log_q in scored.items():
            bits[kind] -= log_q[rows, targets].sum().item() / math.log(2)
        if bias_rate:  # the gradient of the code length in nats, q - [y = x], summed over the segment
            pull = scored["biased"].detach().exp()
            pull[rows, targets] -= 1
            bias -= bias_rate * pull.sum(0)
        if weight_rate:
            loss.backward()
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p -= weight_rate * p.grad
                        p.grad = None
        past = [(_keep(layer.keys), _keep(layer.values)) for layer in cache.layers]
    return bits


def _keep(t: torch.Tensor) -> torch.Tensor:
    """The sinks and the last CONTEXT positions of a cache tensor [batch, heads, positions, dim]."""
    return (t if t.shape[2] <= SINKS + CONTEXT else torch.cat([t[:, :, :SINKS], t[:, :, -CONTEXT:]], 2)).detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="a path, or a file of the corpus folder")
    parser.add_argument("--bytes", type=int, default=None, help="only the first BYTES")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    torch.manual_seed(0)
    name, data = load_input(args.file, args.bytes)
    loaded = load_model(args.model)
    ids = loaded.tokenizer.encode(data)
    vocab = loaded.tokenizer.model_vocab
    # escapes (symbols past the model's vocabulary: bytes its tokenizer cannot reproduce) have no
    # logit here; none in the corpus' text files
    escapes = int((ids >= vocab).sum())
    ids = torch.from_numpy(np.concatenate([[loaded.tokenizer.roles.start_id], ids]).clip(max=vocab - 1))
    runs = [(0.0, BIAS_RATE), (WEIGHT_RATE, 0.0), (WEIGHT_RATE, BIAS_RATE)]
    rows = []
    for weight_rate, bias_rate in runs:
        model = load_model(args.model).model.float() if weight_rate else loaded.model.float()
        started = time.perf_counter()
        bits = code_lengths(model.eval(), ids, weight_rate, bias_rate)
        seconds = time.perf_counter() - started
        prefix = "weights" if weight_rate else "model"
        for kind, total in bits.items():
            if weight_rate and bias_rate and kind == "plain":
                continue  # the weights learned from the biased code length: score that one
            variant = prefix if kind == "plain" else ("bias" if not weight_rate else "weights+bias")
            rows.append({"variant": variant, "bits_per_byte": round(total / len(data), 4), "seconds": round(seconds)})
            print(rows[-1], flush=True)
    cold = rows[0]["bits_per_byte"]
    for row in rows:
        row["vs_model_percent"] = round(100 * (row["bits_per_byte"] / cold - 1), 2)
    settings = {"model": args.model, "bytes": len(data), "tokens": len(ids) - 1, "escapes": escapes,
                "segment": SEGMENT, "context": CONTEXT, "sinks": SINKS, "block": BLOCK,
                "weight_rate": WEIGHT_RATE, "bias_rate": BIAS_RATE, "precision": "float32"}  # fmt: skip
    result = {"machine": machine(), "settings": settings, "file": name, "variants": rows}
    save(f"dynamic_eval_{args.model}_{name}.json", result)
    print(markdown_table(rows, ["variant", "bits_per_byte", "vs_model_percent", "seconds"]))


if __name__ == "__main__":
    main()
