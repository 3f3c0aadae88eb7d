"""How chunk size and batch size trade ratio for speed (to choose the defaults).

    python benchmarks/chunk_size.py ../shared/corpus/enwik5 --bytes 40000

Ratio: the model's cross-entropy (teacher-forced, one forward per chunk, start token first)
in bits per byte, for each chunk size; the coder adds its small overhead and the header on top.
Speed: tokens/s of the lockstep KV-cache step the coder runs, for each row count, measured
over `--steps` steps from an empty cache.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from llmzip.compressor import torch_threads
from llmzip.models import load_model
from llmzip.predictor import Predictor

RESULTS = Path(__file__).parent / "results"


@torch.inference_mode()
def cross_entropy_bits(model, ids: np.ndarray, start_id: int, chunk: int) -> float:
    bits = 0.0
    for first in range(0, len(ids), chunk):
        piece = torch.from_numpy(np.concatenate([[start_id], ids[first : first + chunk]])).view(1, -1)
        piece = piece.clamp(max=model.config.vocab_size - 1)  # escapes: rare, approximated
        logp = torch.log_softmax(model(input_ids=piece).logits[0, :-1].float(), -1)
        bits -= logp.gather(1, piece[0, 1:, None]).sum().item() / math.log(2)
    return bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--bytes", type=int, default=40_000, help="prefix of the file to measure")
    parser.add_argument("--chunks", default="128,256,512,1024,2048")
    parser.add_argument("--rows", default="4,8,16,32")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    loaded = load_model(args.model)
    data = args.file.read_bytes()[: args.bytes]
    ids = loaded.tokenizer.encode(data)
    report = {"model": args.model, "file": str(args.file), "bytes": len(data), "tokens": len(ids)}
    report["threads"] = args.threads
    with torch_threads(args.threads):
        report["ratio"] = []
        for chunk in map(int, args.chunks.split(",")):
            started = time.perf_counter()
            bpb = cross_entropy_bits(loaded.model, ids, loaded.tokenizer.roles.start_id, chunk) / len(data)
            seconds = time.perf_counter() - started
            report["ratio"].append({"chunk_tokens": chunk, "bits_per_byte": bpb, "seconds": seconds})
            print(json.dumps(report["ratio"][-1]), flush=True)
        report["speed"] = []
        for rows in map(int, args.rows.split(",")):
            predictor = Predictor(loaded.model, rows, loaded.tokenizer.alphabet_size)
            predictor.reset(args.steps)
            inputs = np.full(rows, loaded.tokenizer.roles.start_id)
            started = time.perf_counter()
            for t in range(args.steps):
                predictor.step(ids[t * rows : (t + 1) * rows] if len(ids) >= (t + 1) * rows else inputs)
            seconds = time.perf_counter() - started
            report["speed"].append({"rows": rows, "steps": args.steps, "tokens_per_s": rows * args.steps / seconds})
            print(json.dumps(report["speed"][-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chunk_size.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
