"""How chunk size, batch size and precision trade ratio for speed (to choose the defaults).

    python benchmarks/chunk_size.py ../shared/corpus/enwik5 --chunks 128,256,512,1024,2048,4096,max
    python benchmarks/chunk_size.py enwik5 --chunks 1024 --batches 4,8,16,32      # bytes/s vs batch size
    python benchmarks/chunk_size.py --quick

For each combination, compresses the file with the real coder (model loaded once) and reports
the archive's bits per byte, compress bytes/s (decompress runs the same steps: see speed.py),
the rows per step and the KV cache size. `max` is the longest chunk the model's context holds
(no chunking, for a file that fits). Results go to
benchmarks/results/chunk_size_<file>[_<bytes>]_<precisions>[_batches<B>][_quick].json.
"""

from __future__ import annotations

import argparse
import itertools
import json

from common import load_input, machine, save

from llmzip import Compressor, container, load_model
from llmzip.predictor import cache_bytes, default_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", default="enwik5", help="a path or a file of ../shared/corpus")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--bytes", type=int, default=None, help="code only this prefix of the file")
    parser.add_argument("--chunks", default="128,256,512,1024,2048,4096,max", help="chunk sizes in tokens, or max")
    parser.add_argument("--batches", default="64", help="batch sizes (most chunks per batch)")
    parser.add_argument("--precisions", help="default: exact where the model has it, else its float default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="8 KB, chunks of 128, 512 and 1024 tokens")
    args = parser.parse_args()
    if args.quick:
        args.bytes, args.chunks = 8000, "128,512,1024"
    loaded = load_model(args.model)
    args.precisions = args.precisions or default_precision(loaded.architecture)
    name, data = load_input(args.file, args.bytes)
    context = getattr(loaded.model.config, "max_position_embeddings", None) or container.MAX_CHUNK_TOKENS + 1
    longest = min(context - 1, container.MAX_CHUNK_TOKENS)  # the start token takes one position
    report = {"machine": machine(), "model": args.model, "file": name, "bytes": len(data), "runs": []}
    batches = map(int, args.batches.split(","))
    chunks = [longest if c == "max" else int(c) for c in args.chunks.split(",")]
    grid = itertools.product(args.precisions.split(","), batches, chunks)
    for precision, batch, chunk in grid:
        compressor = Compressor(loaded, chunk_size=chunk, batch_size=batch, threads=args.threads, precision=precision)
        archive = compressor.compress(data)
        header, _ = container.unpack(archive)
        run = {
            "precision": precision,
            "chunk_tokens": chunk,
            "batch_size": batch,
            "rows": header.rows,
            "chunks": len(header.chunks),
            "bits_per_byte": round(8 * len(archive) / len(data), 4),
            "compress_bytes_per_s": round(len(data) / compressor.stats.seconds, 1),
            "kv_cache_mb": round(cache_bytes(loaded.model, precision, header.rows, chunk) / 1e6),
        }
        report["runs"].append(run)
        print(json.dumps(run), flush=True)
    batches_part = "" if args.batches == "64" else "batches" + args.batches.replace(",", "-")
    parts = [name, str(args.bytes or ""), args.precisions.replace(",", "-"), batches_part, "quick" * args.quick]
    save("chunk_size_" + "_".join(filter(None, parts)) + ".json", report)


if __name__ == "__main__":
    main()
