"""torch.compile of the Llama step against the eager step (issue: cheaper predictors).

    python benchmarks/compile_step.py ../shared/corpus/enwik5 --rows 26 --steps 1024

Runs the first rows x steps tokens of the file, one chunk per row, through three steps with
the same precision: eager with prepacked oneDNN weights (what llmzip runs), eager with plain
F.linear, and torch.compile of the plain one (inductor cannot trace the prepacked op). Reports
tokens/s (compile time apart), the ideal code length in bits per byte of the chunks, and peak
RSS. Results go to benchmarks/results/compile_step.json.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from pathlib import Path
from unittest import mock

import torch
from common import machine, save

from llmzip import load_model
from llmzip.llama import LlamaConfig, LlamaStep


def run(step, forward, ids: torch.Tensor, nbytes: int, start_id: int) -> dict[str, float]:
    rows, steps = ids.shape
    step.reset(steps)
    inputs, bits = torch.full((rows,), start_id), 0.0
    started = time.perf_counter()
    for t in range(steps):
        logp = torch.log_softmax(forward(inputs), -1)
        bits -= logp.gather(1, ids[:, t : t + 1]).sum().item() / math.log(2)
        inputs = ids[:, t]
    seconds = time.perf_counter() - started
    return {"tokens_per_s": rows * steps / seconds, "bits_per_byte": bits / nbytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=26)
    parser.add_argument("--steps", type=int, default=1024)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    ids = loaded.tokenizer.encode(args.file.read_bytes())[: args.rows * args.steps]
    if len(ids) < args.rows * args.steps:
        raise SystemExit("file too short for rows x steps tokens")
    tokens = torch.from_numpy(ids.reshape(args.rows, args.steps)).clamp(max=loaded.tokenizer.roles.model_vocab - 1)
    nbytes = int(loaded.tokenizer.id_nbytes[ids].sum())
    start_id, config = loaded.tokenizer.roles.start_id, LlamaConfig.of(loaded.model)
    report = {"machine": machine(), "settings": vars(args) | {"file": str(args.file)}, "runs": {}}

    packed = LlamaStep(loaded.model, config, args.rows, args.precision)
    report["runs"]["eager, prepacked"] = run(packed, packed, tokens, nbytes, start_id)
    print(json.dumps(report["runs"]), flush=True)
    del packed
    with mock.patch.object(torch.backends.mkldnn, "is_available", return_value=False):
        plain = LlamaStep(loaded.model, config, args.rows, args.precision)
    report["runs"]["eager, F.linear"] = run(plain, plain, tokens, nbytes, start_id)
    print(json.dumps(report["runs"]), flush=True)
    # __call__ runs under inference_mode, which torch.compile does not support: compile the step
    # as a function of (input embeddings, position), so that the position is a dynamic size, under no_grad.
    compiled = torch.compile(plain.forward, dynamic=True)

    def compiled_step(ids: torch.Tensor) -> torch.Tensor:
        plain.position += 1
        return compiled(plain.embed[ids], plain.position - 1)

    with torch.no_grad():
        started = time.perf_counter()
        run(plain, compiled_step, tokens[:, :3], nbytes, start_id)
        compile_seconds = time.perf_counter() - started
        report["runs"]["compiled, F.linear"] = run(plain, compiled_step, tokens, nbytes, start_id)
    report["runs"]["compiled, F.linear"]["compile_seconds"] = compile_seconds
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(report, indent=2))
    save("compile_step.json", report)


if __name__ == "__main__":
    main()
