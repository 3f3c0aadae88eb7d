"""Whole corpus files at the default level and at level 1 (llmzip 0.2's cold 1024-token chunks):
does any file get larger at the default? Sizes beside the classical compressors.

    python benchmarks/corpus.py                       # every file of the corpus folder
    python benchmarks/corpus.py paper1 progc --levels 1,6
    python benchmarks/corpus.py kokoro.ja.txt --model smollm2-135m   # one model, not --model auto's choice

Compression only, and no speeds: sizes are what this table is for (levels.py times both
directions and checks the round trip; the test suite proves that decoding gives the coded bytes
back). An exact archive's size depends on the file, the model and the llmzip commit, not on the
machine or its load (but for the few header bytes that name the torch and CPU kernels), so a
long corpus can be measured a few files per run, beside other work: rows accumulate in
benchmarks/results/corpus.json, one per file, replaced when the file is measured again, each
with the commit and machine that measured it.
"""

from __future__ import annotations

import argparse
import io
import json
import time

from common import CORPUS, RESULTS, baselines, command_line, load_input, machine, round_trip, save

from llmzip import Compressor, load_model
from llmzip.levels import DEFAULT_LEVEL
from llmzip.model_choice import AUTO, choose, probe_pieces

RESULT = "corpus.json"
NOT_INPUTS = {"MANIFEST.md", "SHA256SUMS"}  # the corpus folder's own description


def corpus_files() -> list[str]:
    """The corpus folder's files, smallest first (the most files per hour)."""
    files = [p for p in CORPUS.iterdir() if p.is_file() and p.name not in NOT_INPUTS]
    return [p.name for p in sorted(files, key=lambda p: p.stat().st_size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="*", help="paths or corpus file names (default: the whole corpus)")
    parser.add_argument("--levels", default=f"1,{DEFAULT_LEVEL}", help="comma-separated")
    parser.add_argument("--model", default=AUTO, help="auto (the default): the model a probe of each file picks")
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",")]
    loaded = {} if args.model == AUTO else {args.model: load_model(args.model)}
    path = RESULTS / RESULT
    rows = {r["file"]: r for r in json.loads(path.read_text())["rows"]} if path.exists() else {}
    for spec in args.inputs or corpus_files():
        name, data = load_input(spec)
        started = time.perf_counter()
        sizes = {}
        for level in levels:
            if args.model == AUTO:
                model, choice = choose(probe_pieces(io.BytesIO(data), len(data)), level, loaded=loaded)
            else:
                model, choice = loaded[args.model], None
            result = round_trip(Compressor(model, level=level, choice=choice), data, verify=False)
            sizes[str(level)] = {k: result[k] for k in ("archive_bytes", "bits_per_byte")}  # no speeds: any load
            sizes[str(level)]["model"] = model.name
            if choice is not None:
                sizes[str(level)]["probe_bits_per_byte"] = {
                    m: round(bits / choice.probe_bytes, 4) for m, bits in choice.probe_bits.items()
                }
        rows[name] = {
            "file": name,
            "bytes": len(data),
            "model": args.model,
            "default_level": DEFAULT_LEVEL,
            "levels": sizes,
            "baselines": {k: v["bits_per_byte"] for k, v in baselines(data).items()},
            "machine": machine(),
            "command": command_line(),
        }
        figures = ", ".join(f"-{k} {v['bits_per_byte']:.4f}" for k, v in sizes.items())
        seconds = time.perf_counter() - started
        print(f"{name} ({len(data)} bytes): {figures} bits per byte, xz/brotli too ({seconds:.0f} s)", flush=True)
        save(RESULT, {"rows": sorted(rows.values(), key=lambda r: r["bytes"])})


if __name__ == "__main__":
    main()
