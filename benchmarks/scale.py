"""Scale-out: bytes/s against Ray workers on this machine, each setting's fixed costs, and from
those measurements the projected wall time for enwik8 on 1, 8 and 64 workers.

    python benchmarks/scale.py enwik6 --bytes 200000 --batch-size 7 --workers 1,2

Every setting codes the same input with the same options (one process without Ray, then a
local Ray cluster per worker count) and must give the same archive bytes (sha256). Batches are
the unit of parallelism, so give the input at least as many batches as workers (--batch-size).
Results go to benchmarks/results/scale_<file>[_<bytes>].json.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time

from common import load_input, machine, save

from llmzip import Compressor, load_model
from llmzip.aliases import DEFAULT_MODEL
from llmzip.chunking import DEFAULT_BATCH_SIZE
from llmzip.cluster import Cluster
from llmzip.levels import DEFAULT_LEVEL

ENWIK8_BYTES = 100_000_000
PROJECTED_WORKERS = (1, 8, 64)


def run(compressor: Compressor, data: bytes, decompress: bool, cluster: Cluster | None) -> dict[str, object]:
    """Each way's wall time and bytes/s, and on a cluster one worker's bytes/s while it codes."""
    row: dict[str, object] = {}
    archive = data
    for way in ("compress", "decompress") if decompress else ("compress",):
        before = _worked(cluster)
        started = time.perf_counter()
        archive = getattr(compressor, way)(archive)
        seconds = time.perf_counter() - started
        if way == "compress":
            row |= {
                "sha256": hashlib.sha256(archive).hexdigest(),
                "archive_bytes": len(archive),
                "batches": -(-compressor.stats.chunks // compressor.batch_size),
            }
        elif archive != data:
            raise SystemExit("the round trip failed")
        row |= {f"{way}_s": round(seconds, 1), f"{way}_bytes_per_s": round(len(data) / seconds)}
        if cluster is not None:
            coded, busy = (after - first for after, first in zip(_worked(cluster), before, strict=True))
            row[f"{way}_worker_bytes_per_s"] = round(coded / busy)
    return row


def _worked(cluster: Cluster | None) -> tuple[int, float]:
    """Input bytes coded and seconds spent coding, summed over the cluster's workers so far."""
    figures = cluster.figures.values() if cluster is not None else []
    return sum(w.input_bytes for w in figures), sum(w.seconds for w in figures)


def project(rows: list[dict], tokens_per_byte: float, chunk_size: int, batch_size: int) -> list[dict]:
    """enwik8's wall time on W workers (default batches), each worker coding as fast as one did
    in this run's largest setting: its fixed costs + ceil(batches / W) rounds of one batch each."""
    measured = rows[-1]
    batches = math.ceil(math.ceil(ENWIK8_BYTES * tokens_per_byte / chunk_size) / batch_size)
    batch_bytes = ENWIK8_BYTES / batches
    fixed = measured["cluster_start_s"] + measured["workers_load_s"]
    out = []
    for workers in PROJECTED_WORKERS:
        rounds = math.ceil(batches / workers)
        row = {"workers": workers, "enwik8_batches": batches, "rounds": rounds}
        for way in ("compress", "decompress"):
            if f"{way}_worker_bytes_per_s" in measured:
                hours = (fixed + rounds * batch_bytes / measured[f"{way}_worker_bytes_per_s"]) / 3600
                row[f"{way}_hours"] = round(hours, 1)
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="a path, corpus file name or dataset id")
    parser.add_argument("--bytes", type=int, default=None, help="only this prefix of the input")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--level", type=int, default=DEFAULT_LEVEL)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--no-decompress", action="store_true", help="time compress only")
    args = parser.parse_args()
    name, data = load_input(args.input, args.bytes)
    options = {"level": args.level, "batch_size": args.batch_size}
    decompress = not args.no_decompress

    single = Compressor(load_model(args.model), **options)
    row = {"workers": 0, "threads": single.threads} | run(single, data, decompress, None)
    print(f"one process, {single.threads} threads: {row}", flush=True)
    rows = [row]
    for workers in [int(n) for n in args.workers.split(",")]:
        with Cluster(workers) as cluster:
            compressor = Compressor(args.model, cluster=cluster, **options)
            row = {"workers": workers, "threads": cluster.threads} | run(compressor, data, decompress, cluster)
            row |= {
                "cluster_start_s": round(cluster.start_seconds, 1),
                "workers_load_s": round(cluster.load_seconds, 1),  # inside the compress time
                "model_load_s": round(max(w.load_seconds for w in cluster.figures.values()), 1),
                "retries": cluster.retries,
            }
        if row["sha256"] != rows[0]["sha256"]:
            raise SystemExit(f"{workers} workers made other archive bytes than one process")
        print(f"{workers} workers: {row}", flush=True)
        rows.append(row)
        save_report(args, name, data, single, rows)


def save_report(args: argparse.Namespace, name: str, data: bytes, single: Compressor, rows: list[dict]) -> None:
    """The settings measured so far and enwik8 projected from the last (saved after each setting)."""
    tokens_per_byte = single.stats.tokens / len(data)
    enwik8_chunk_size = single.chunk_size_for(math.ceil(ENWIK8_BYTES * tokens_per_byte))
    projection = project(rows, tokens_per_byte, enwik8_chunk_size, DEFAULT_BATCH_SIZE)
    for p in projection:
        print(f"enwik8 on {p['workers']} workers (projected): {p}", flush=True)
    report = {
        "machine": machine(),
        "settings": {"input": name, "bytes": len(data), "level": args.level, "batch_size": args.batch_size,
                     "model": args.model, "chunk_size": single.stats.chunk_size,
                     "tokens_per_byte": round(tokens_per_byte, 4), "enwik8_batch_size": DEFAULT_BATCH_SIZE,
                     "enwik8_chunk_size": enwik8_chunk_size},
        "measured": rows,
        "projected_enwik8": projection,
    }  # fmt: skip
    save(f"scale_{name}{f'_{args.bytes}' if args.bytes else ''}.json", report)


if __name__ == "__main__":
    main()
