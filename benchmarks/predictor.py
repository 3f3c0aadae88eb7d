"""The predictor: one model exact (machine-independent integers) and as float forwards in fp32,
bf16 and int8 (torch dynamic quantization) — bits per byte, compress and decompress bytes/s,
peak RSS and the predictor's weight memory.

    python benchmarks/predictor.py ../shared/corpus/enwik5
    python benchmarks/predictor.py --quick                # 4 KB of enwik5

Each precision runs in a process of its own, so its peak RSS is its own. `weight_mb` is how
much the resident set grows while the predictor builds its weights (converted and packed from
the float32 model, which stays loaded), allocator slack included. Results:
benchmarks/results/predictor_<file>_<bytes>.json (predictor_<model>_<file>_<bytes>.json for
another model than the default).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
from pathlib import Path

from common import load_input, machine, markdown_table, round_trip, save

from llmzip import Compressor, load_model
from llmzip.aliases import DEFAULT_MODEL
from llmzip.container import EXACT, PRECISIONS
from llmzip.exact.architectures import exact_architecture
from llmzip.float_predictor import FloatPredictor
from llmzip.levels import FASTEST, LEVELS

COLUMNS = ["precision", "bits_per_byte", "vs_fp32", "compress_bytes_per_s", "decompress_bytes_per_s",
           "peak_rss_mb", "weight_mb"]  # fmt: skip


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def one(model: str, file: str, nbytes: int | None, precision: str, chunk_size: int, verify: bool) -> dict[str, object]:
    """Measure one precision in this process."""
    _, data = load_input(file, nbytes)
    loaded = load_model(model)
    gc.collect()
    before = rss_mb()
    if precision == EXACT:
        architecture = exact_architecture(loaded.model)
        predictor = architecture.prepare(loaded.model, architecture.Config.of(loaded.model))
    else:
        predictor = FloatPredictor(loaded.model, 4, loaded.tokenizer.alphabet_size, precision)
    weight_mb = rss_mb() - before
    del predictor
    gc.collect()
    compressor = Compressor(loaded, chunk_size=chunk_size, precision=precision)
    return (
        {"precision": precision}
        | round_trip(compressor, data, verify)
        | {
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "weight_mb": round(weight_mb),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", default="enwik5")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--bytes", type=int, default=0, help="code only this prefix of the file (0: all)")
    parser.add_argument("--chunk-size", type=int, default=LEVELS[FASTEST].chunk_size)
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--quick", action="store_true", help="4 KB of the file")
    parser.add_argument("--no-verify", action="store_true", help="compress only (no decompress speed)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure this precision, print JSON
    args = parser.parse_args()
    nbytes = 4000 if args.quick else args.bytes or None
    if args.one:
        print(json.dumps(one(args.model, args.file, nbytes, args.one, args.chunk_size, not args.no_verify)))
        return
    name, data = load_input(args.file, nbytes)
    rows = []
    for precision in args.precisions.split(","):
        command = [sys.executable, __file__, args.file, "--model", args.model, "--chunk-size", str(args.chunk_size),
                   "--bytes", str(nbytes or 0), "--one", precision]  # fmt: skip
        command += ["--no-verify"] if args.no_verify else []
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
        rows.append(json.loads(out.splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    fp32 = next((r["bits_per_byte"] for r in rows if r["precision"] == "fp32"), None)
    for r in rows:
        r["vs_fp32"] = f"{100 * (r['bits_per_byte'] / fp32 - 1):+.2f}%" if fp32 else ""
    report = {"machine": machine(), "model": args.model, "file": name, "bytes": len(data),
              "chunk_size": args.chunk_size, "rows": rows}  # fmt: skip
    suffix = "_quick" if args.quick else ""
    model = "" if args.model == DEFAULT_MODEL else f"{Path(args.model).name}_"
    print(f"\nwritten to {save(f'predictor_{model}{name}_{len(data)}{suffix}.json', report)}\n")
    print(markdown_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
