"""What online adaptation of the model itself would save: dynamic evaluation (Krause et al.
2018, 2019), simulated with the float model. Not llmzip's coder: no side models, no exact
arithmetic; it measures the language model's code length (bits per byte, what an ideal coder
would write) on a file, cold and adapted, to size the idea before building it exactly.

    python benchmarks/dynamic_eval.py alice29.txt
    python benchmarks/dynamic_eval.py enwik5
    python benchmarks/dynamic_eval.py alice29.txt --variants rms
    python benchmarks/dynamic_eval.py alice29.txt --bytes 30000 --variants design
    python benchmarks/dynamic_eval.py alice29.txt --bytes 30000 --variants logits
    python benchmarks/dynamic_eval.py alice29.txt --bytes 30000 --variants grid
    python benchmarks/dynamic_eval.py alice29.txt --bytes 30000 --variants cost

Every variant codes the same segments (128 tokens; each token sees the 1024 before it and the
first 4 of its block, as attention sinks; blocks of 8192 positions, the model's context,
restart cold, since sinks farther away than the context break its attention):
- `model`: the weights as loaded, nothing learned;
- `bias`: a per-token bias of the logits learned from each segment (the float analogue of
  llmzip's adaptive bias, side/bias.py);
- `weights`: after each segment, one SGD step on every weight against that segment's code
  length, carried on through the file (the decoder could take the same step after decoding it);
- `weights+bias`: both;
and, to size an exact version (`--variants rms`, `--variants design`): the step scaled per weight by a running
RMS of its gradients (`RMS`); gradients passed back along the residual stream only, not into
the inputs of attention and MLP blocks (`residual path`: each block's gradient is then local,
and no backward pass runs through attention); the gradient at every linear layer's output
rounded per token to 16 or 8 bits, as an integer backward pass would (`16-bit gradients`; 8
bits but 16 or 24 for the logits' gradient, which 8 bits would round to zero below 1/254 of
its largest entry: `--variants logits`); the matrices read rounded per output channel to 229
levels, the exact model's grid, while the steps move a float copy (`8-bit weights`,
`--variants grid`); and what cuts learning's cost (`--variants cost`): only the head, or the last
4 or 8 layers and the head, learning (the embeddings, tied to SmolLM2's head, then read as
constants, as the exact learner reads its own embedding table); a step after every 4th segment
only; segments of 512 tokens (a quarter of the steps).
Results: benchmarks/results/dynamic_eval_<model>_<file>[_<bytes>][_<variants>].json.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass

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
SGD_RATE = 1e-4  # on the summed code length in nats (alice29.txt's first 8000 tokens: 3e-5 worse, 3e-4 diverges)
RMS_RATE = 6e-5  # per weight, over the RMS of its gradient (alice29.txt's first 8000 tokens: 3e-5 and 1e-4 worse)
RMS_DECAY = 0.99  # of the running mean square, per segment
BIAS_RATE = 0.06  # per segment of 128 tokens (alice29.txt: 0.0125 and 0.03 worse)


@dataclass(frozen=True)
class Learning:
    """What a variant learns from each segment, and how."""

    weight_rate: float = 0.0
    bias_rate: float = 0.0
    optimizer: str = "sgd"  # or "rms"
    residual_path: bool = False  # gradients reach earlier layers only through the residual stream
    gradient_bits: int | None = None  # each linear layer's output gradient rounded per token to this many bits
    logit_bits: int | None = None  # the logits' gradient rounded so, where not to `gradient_bits`
    weight_levels: int | None = None  # matrices computed rounded per output channel to integers up to this
    top_layers: int | None = None  # only the last this many decoder layers and the head learn (not the embeddings)
    every: int = 1  # a step after every this-many-th segment, from its code length alone
    segment: int = SEGMENT  # tokens scored, then learned from


VARIANTS = {
    "model": Learning(),
    "bias": Learning(bias_rate=BIAS_RATE),
    "weights": Learning(SGD_RATE),
    "weights+bias": Learning(SGD_RATE, BIAS_RATE),
    "weights, RMS": Learning(RMS_RATE, optimizer="rms"),
    "weights, residual path": Learning(SGD_RATE, residual_path=True),
    "weights, 16-bit gradients": Learning(SGD_RATE, gradient_bits=16),
    "weights, 8-bit gradients": Learning(SGD_RATE, gradient_bits=8),
    "weights, 8-bit gradients, 16-bit at the logits": Learning(SGD_RATE, gradient_bits=8, logit_bits=16),
    "weights, RMS, 16-bit gradients": Learning(RMS_RATE, optimizer="rms", gradient_bits=16),
    "weights, 8-bit gradients, 24-bit at the logits": Learning(SGD_RATE, gradient_bits=8, logit_bits=24),
    "weights, RMS, 8-bit gradients, 24-bit at the logits": Learning(
        RMS_RATE, optimizer="rms", gradient_bits=8, logit_bits=24
    ),
    "weights, RMS, residual path, 16-bit gradients": Learning(
        RMS_RATE, optimizer="rms", residual_path=True, gradient_bits=16
    ),
    "model, 8-bit weights": Learning(weight_levels=229),
    "weights, RMS, 8-bit weights": Learning(RMS_RATE, optimizer="rms", weight_levels=229),
    "weights, RMS, head only": Learning(RMS_RATE, optimizer="rms", top_layers=0),
    "weights, RMS, last 4 layers and head": Learning(RMS_RATE, optimizer="rms", top_layers=4),
    "weights, RMS, last 8 layers and head": Learning(RMS_RATE, optimizer="rms", top_layers=8),
    "weights, RMS, every 4th segment": Learning(RMS_RATE, optimizer="rms", every=4),
    "weights, RMS, segments of 512": Learning(RMS_RATE, optimizer="rms", segment=512),
}
SETS = {
    "basic": ["model", "bias", "weights", "weights+bias"],
    "rms": ["model", "weights, RMS"],
    "design": [
        "model",
        "weights",
        "weights, RMS",
        "weights, residual path",
        "weights, 16-bit gradients",
        "weights, 8-bit gradients",
        "weights, 8-bit gradients, 16-bit at the logits",
        "weights, RMS, 16-bit gradients",
        "weights, RMS, residual path, 16-bit gradients",
    ],
    "logits": [
        "model",
        "weights, 8-bit gradients, 24-bit at the logits",
        "weights, RMS, 8-bit gradients, 24-bit at the logits",
    ],
    "grid": [
        "model",
        "model, 8-bit weights",
        "weights, RMS",
        "weights, RMS, 8-bit weights",
    ],
    "cost": [
        "model",
        "weights, RMS",
        "weights, RMS, head only",
        "weights, RMS, last 4 layers and head",
        "weights, RMS, last 8 layers and head",
        "weights, RMS, every 4th segment",
        "weights, RMS, segments of 512",
    ],
}


def round_per_row(g: torch.Tensor, levels: int) -> torch.Tensor:
    """g rounded to integers in [-levels, levels] times one scale per row of its last axis (max|g|)."""
    scale = g.abs().amax(-1, keepdim=True).clamp(min=1e-30) / levels
    return torch.round(g / scale) * scale


def prepare(model: torch.nn.Module, learning: Learning) -> None:
    """Hooks that make the backward pass what `learning` says."""
    if learning.gradient_bits:
        head = model.get_output_embeddings()

        def round_gradient(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            bits = learning.logit_bits if module is head and learning.logit_bits else learning.gradient_bits
            if output.requires_grad:
                output.register_hook(lambda g: round_per_row(g, 2 ** (bits - 1) - 1))

        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(round_gradient)
    if learning.top_layers is not None:  # the embeddings (tied to the head) read as constants: no backward below
        model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: output.detach())
    if learning.residual_path:

        def detach_input(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            kwargs = {k: v.detach() if k == "hidden_states" else v for k, v in kwargs.items()}
            return tuple(a.detach() if torch.is_tensor(a) else a for a in args), kwargs

        for layer in model.model.layers:
            layer.self_attn.register_forward_pre_hook(detach_input, with_kwargs=True)
            layer.mlp.register_forward_pre_hook(detach_input, with_kwargs=True)


def code_length(model: torch.nn.Module, ids: torch.Tensor, learning: Learning) -> float:
    """Bits of ids[1:] given ids[0] as the start token, learning as `learning` says."""
    vocab = model.get_output_embeddings().weight.shape[0]
    bias = torch.zeros(vocab)
    learns = learning.weight_rate > 0
    layers = len(model.model.layers)
    first = 0 if learning.top_layers is None else layers - learning.top_layers

    def learned(name: str) -> bool:
        """All, or the head (tied: the embedding table), the final norm and the last layers."""
        return not name.startswith("model.layers.") or int(name.split(".")[2]) >= first

    params = [p for _, p in model.named_parameters()]
    for name, p in model.named_parameters():
        p.requires_grad_(learns and learned(name))
    mean_square = [torch.zeros_like(p) for p in params] if learning.optimizer == "rms" else []
    # with weight_levels, the forward reads the matrices rounded to a grid and the steps move a
    # float copy of them (straight through the rounding, as an integer model would keep them)
    masters = {i: p.detach().clone() for i, p in enumerate(params) if learning.weight_levels and p.dim() == 2}
    bits, steps = 0.0, 0
    past: list[tuple[torch.Tensor, torch.Tensor]] = []
    segment = learning.segment
    for k, start in enumerate(range(0, len(ids) - 1, segment)):
        length = min(segment, len(ids) - 1 - start)
        learns_now = learns and k % learning.every == learning.every - 1
        targets = ids[start + 1 : start + 1 + length]
        if start % BLOCK == 0:
            past = []
        with torch.no_grad():
            for i, master in masters.items():
                params[i].copy_(round_per_row(master, learning.weight_levels))
        cache = DynamicCache()
        for layer, (k, v) in enumerate(past):
            cache.update(k, v, layer)
        positions = torch.arange(start % BLOCK, start % BLOCK + length)[None]
        with torch.set_grad_enabled(learns_now):
            logits = model(ids[None, start : start + length], cache=cache, position_ids=positions).logits[0].float()
            log_q = torch.log_softmax(logits + bias, -1)
            rows = torch.arange(length)
            loss = -log_q[rows, targets].sum()
        bits += loss.item() / math.log(2)
        if learning.bias_rate:  # the gradient of the code length in nats, q - [y = x], summed over the segment
            pull = log_q.detach().exp()
            pull[rows, targets] -= 1
            bias -= learning.bias_rate * pull.sum(0)
        if learns_now:
            loss.backward()
            steps += 1
            with torch.no_grad():
                for i, p in enumerate(params):
                    if p.grad is None:  # a gain read only where the residual path cut the gradient
                        continue
                    step = p.grad
                    if mean_square:
                        mean_square[i].mul_(RMS_DECAY).add_((1 - RMS_DECAY) * step * step)
                        step = step / (mean_square[i] / (1 - RMS_DECAY**steps)).sqrt().add(1e-8)
                    (masters.get(i, p)).sub_(learning.weight_rate * step)
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
    parser.add_argument("--variants", choices=list(SETS), default="basic")
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
    rows = []
    for variant in SETS[args.variants]:
        learning = VARIANTS[variant]
        model = load_model(args.model).model.float().eval()  # fresh weights and no hooks for each
        prepare(model, learning)
        started, cpu_started = time.perf_counter(), time.process_time()
        bits = code_length(model, ids, learning)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        rows.append({"variant": variant, "bits_per_byte": round(bits / len(data), 4), "seconds": round(seconds),
                     "cpu_seconds": round(cpu_seconds), "learning": asdict(learning)})  # fmt: skip
        print(rows[-1], flush=True)
    cold = rows[0]["bits_per_byte"]
    for row in rows:
        row["vs_model_percent"] = round(100 * (row["bits_per_byte"] / cold - 1), 2)
    settings = {"model": args.model, "bytes": len(data), "tokens": len(ids) - 1, "escapes": escapes,
                "segment": SEGMENT, "context": CONTEXT, "sinks": SINKS, "block": BLOCK,
                "rms_decay": RMS_DECAY, "precision": "float32"}  # fmt: skip
    result = {"machine": machine(), "settings": settings, "file": name, "variants": rows}
    parts = [args.model, name] + [str(args.bytes)] * bool(args.bytes) + [args.variants] * (args.variants != "basic")
    save(f"dynamic_eval_{'_'.join(parts)}.json", result)
    print(markdown_table(rows, ["variant", "bits_per_byte", "vs_model_percent", "seconds", "cpu_seconds"]))


if __name__ == "__main__":
    main()
