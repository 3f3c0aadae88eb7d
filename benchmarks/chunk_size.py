"""How chunk size, batch size and precision trade ratio for speed (to choose the defaults).

    python benchmarks/chunk_size.py ../shared/corpus/enwik5 --chunks 256,512,1024,2048 --batches 64

For each combination, compresses the file with the real coder (model loaded once) and reports
the archive's bits per byte, compress bytes/s (decompress runs the same steps: see speed.py),
the rows per step and the KV cache size. Results go to
benchmarks/results/chunk_size_<file>_<precisions>.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from speed import machine

from llmzip import Compressor, container, load_model
from llmzip.predictor import PRECISIONS, default_precision

RESULTS = Path(__file__).parent / "results"


def kv_cache_mb(model, rows: int, chunk: int, precision: str) -> float:
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * PRECISIONS[precision].itemsize
    return rows * chunk * per_token / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--bytes", type=int, default=None, help="code only this prefix of the file")
    parser.add_argument("--chunks", default="256,512,1024,2048", help="chunk sizes in tokens")
    parser.add_argument("--batches", default="64", help="batch sizes (most chunks per batch)")
    parser.add_argument("--precisions", default=default_precision())
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    loaded = load_model(args.model)
    data = args.file.read_bytes()[: args.bytes]
    report = {"machine": machine(), "model": args.model, "file": str(args.file), "bytes": len(data), "runs": []}
    batches, chunks = map(int, args.batches.split(",")), map(int, args.chunks.split(","))
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
            "kv_cache_mb": round(kv_cache_mb(loaded.model, header.rows, chunk, precision)),
        }
        report["runs"].append(run)
        print(json.dumps(run), flush=True)
    RESULTS.mkdir(exist_ok=True)
    name = f"chunk_size_{args.file.name}_{args.precisions.replace(',', '-')}.json"
    (RESULTS / name).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
