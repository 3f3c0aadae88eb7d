"""Coding speed against the model's own bound, with a profile of where the time goes.

    python benchmarks/speed.py ../shared/corpus/enwik6 --bytes 100000

Reports tokens/s and bytes/s of compress and decompress (model already loaded), of a bare
teacher-forced forward over the same chunks at the same rows and threads (the practical upper
bound), their ratio ("efficiency"), peak RSS, and a cProfile breakdown of each direction:
model forward, probabilities (softmax and copy), range coding, and the rest (Python).
`--level` sets the window and side models (default: the default level); chunks stay
`--chunk-size` tokens. Results go to
benchmarks/results/speed_[<model>_]<file>_<bytes>[_<precision>][_level<N>]_<cpu>.json: the model,
precision and level where not the defaults, the CPU always (common.machine_tag).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import resource
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, machine_tag, save
from transformers import DynamicCache

from llmzip import Compressor, container, load_model
from llmzip.aliases import DEFAULT_MODEL
from llmzip.batches import torch_threads
from llmzip.chunking import DEFAULT_BATCH_SIZE
from llmzip.container import EXACT, PRECISIONS
from llmzip.float_predictor import FloatPredictor
from llmzip.levels import DEFAULT_LEVEL, FASTEST, LEVELS
from llmzip.predictor import default_precision

SLICE = 256  # teacher-forced positions per forward: 26 rows x 256 x 49152 float32 logits = 1.3 GB


def profile(fn) -> tuple[object, float, dict[str, float]]:
    """Run fn under cProfile; return its result, wall seconds and seconds per component."""
    profiler = cProfile.Profile()
    started = time.perf_counter()
    result = profiler.runcall(fn)
    seconds = time.perf_counter() - started
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, ncalls, tottime, cumtime, callers)

    def seconds_in(match, column: int) -> float:
        return sum(v[column] for k, v in stats.items() if match(k))

    def forward(k: tuple) -> bool:  # the exact model's forward, or the float predictor's
        file, _, name = k
        forwards = (("llama.py", "forward"), ("gemma3.py", "forward"), ("predictor.py", "_forward"))
        return (file, name) in forwards or any(file.endswith(f"/{f}") and name == n for f, n in forwards)

    def probabilities(k: tuple) -> bool:  # logits -> weights over the alphabet, into numpy
        return k[2] in ("_weights", "softmax_weights") or "softmax" in k[2] or "'numpy' of 'torch" in k[2]

    coding = seconds_in(lambda k: "'encode' of 'builtins.Range" in k[2] or "'decode' of 'builtins.Range" in k[2], 2)
    parts = {"model_forward": seconds_in(forward, 3), "probabilities": seconds_in(probabilities, 3)}
    parts["range_coding"] = coding
    parts["python_and_other"] = seconds - sum(parts.values())
    return result, seconds, parts


@torch.inference_mode()
def teacher_forced_seconds(model, chunks: list[np.ndarray], start_id: int, batch_size: int, rows: int) -> float:
    """Hugging Face forward of each batch of chunks in `rows` rows (padded with the start id), as
    the coder ran them, fed SLICE positions at a time through the KV cache so that the logits
    fit in memory, with the same softmax."""
    started = time.perf_counter()
    for first in range(0, len(chunks), batch_size):
        batch = chunks[first : first + batch_size]
        width = max(len(c) for c in batch) + 1
        ids = np.full((rows, width), start_id, dtype=np.int64)
        for r, c in enumerate(batch):
            ids[r, 1 : len(c) + 1] = c
        cache = DynamicCache()
        for s in range(0, width, SLICE):
            out = model(input_ids=torch.from_numpy(ids[:, s : s + SLICE]), cache=cache, use_cache=True)
            torch.softmax(out.logits.float(), -1)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--bytes", type=int, default=None, help="code only this prefix of the file")
    parser.add_argument("--level", type=int, choices=sorted(LEVELS), default=DEFAULT_LEVEL, help="window, side models")
    parser.add_argument("--chunk-size", type=int, default=LEVELS[FASTEST].chunk_size)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", choices=PRECISIONS, help="default: exact where the model has it")
    args = parser.parse_args()
    data = args.file.read_bytes()[: args.bytes]
    loaded = load_model(args.model)
    args.precision = args.precision or default_precision(loaded.architecture)
    float_precision = "bf16" if default_precision(None) == "bf16" else "fp32"  # the machine's fast float forward
    compressor = Compressor(
        loaded,
        level=args.level,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        threads=args.threads,
        precision=args.precision,
    )
    compressor.prepare()  # before the clock: a first run on a checkout builds the kernels (about a minute)
    archive, c_seconds, c_parts = profile(lambda: compressor.compress(data))
    restored, d_seconds, d_parts = profile(lambda: compressor.decompress(archive))
    assert restored == data, "round trip failed"
    coding_peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the bound's own logits
    ids = loaded.tokenizer.encode(data)
    chunks = [ids[i : i + args.chunk_size] for i in range(0, len(ids), args.chunk_size)]
    with torch_threads(args.threads):
        header, _ = container.unpack(archive)  # the geometry the coder actually ran
        start_id = loaded.tokenizer.roles.start_id
        # The Hugging Face forward at the archive's float precision, or the machine's fast one for exact archives
        bound = float_precision if args.precision == EXACT else args.precision
        model = FloatPredictor(loaded.model, header.rows, loaded.tokenizer.alphabet_size, bound).model
        tf_seconds = teacher_forced_seconds(model, chunks, start_id, header.batch_size, header.rows)
    n = len(ids)
    report = {
        "machine": machine(),
        "settings": vars(args) | {"file": str(args.file)},
        "bytes": len(data),
        "tokens": n,
        "bits_per_byte": 8 * len(archive) / len(data),
        "compress": {"seconds": c_seconds, "tokens_per_s": n / c_seconds, "bytes_per_s": len(data) / c_seconds},
        "decompress": {"seconds": d_seconds, "tokens_per_s": n / d_seconds, "bytes_per_s": len(data) / d_seconds},
        "teacher_forced": {"precision": bound, "seconds": tf_seconds, "tokens_per_s": n / tf_seconds},
        "efficiency": {"compress": tf_seconds / c_seconds, "decompress": tf_seconds / d_seconds},
        "profile_seconds": {"compress": c_parts, "decompress": d_parts},
        "peak_rss_mb": coding_peak_rss_mb,
    }
    print(json.dumps(report, indent=2))
    model = "" if args.model == DEFAULT_MODEL else f"{Path(args.model).name}_"
    precision = "" if args.precision == default_precision(loaded.architecture) else f"_{args.precision}"
    level = "" if args.level == DEFAULT_LEVEL else f"_level{args.level}"
    save(f"speed_{model}{args.file.name}_{len(data)}{precision}{level}_{machine_tag(report['machine'])}.json", report)


if __name__ == "__main__":
    main()
