"""Compression levels: bits per byte, compress and decompress bytes/s and peak RSS of each level,
beside the classical compressors, on the same input in the same run.

    python benchmarks/levels.py ../shared/corpus/enwik6 --levels 1,6
    python benchmarks/levels.py alice29.txt enwik5 --levels 1,3,6,9
    python benchmarks/levels.py enwik5 alice29.txt --levels 9 --model gemma3-270m
    python benchmarks/levels.py enwik5 alice29.txt --levels 9 --no-learn

Each (file, level) runs in its own process (model loaded, then compress and decompress timed,
round trip checked), so each peak RSS is its own. Results go to
benchmarks/results/levels_[<model>_]<file>[_<bytes>][_learn|_no-learn].json, one file per input
(the model named where it is not the default; `--learn`/`--no-learn`: the weights learning as they
code, or not, whatever the level says).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from common import baselines, load_input, machine, round_trip, save

from llmzip import Compressor, load_model
from llmzip.aliases import DEFAULT_MODEL
from llmzip.levels import DEFAULT_LEVEL, LEVELS


def one(model: str, spec: str, nbytes: int | None, level: int, learn: bool | None) -> dict[str, object]:
    """One level on one input, in this process."""
    _, data = load_input(spec, nbytes)
    compressor = Compressor(load_model(model), level=level, learn=learn)
    compressor.prepare()  # before the clock: a first run on a checkout builds the kernels (about a minute)
    result = round_trip(compressor, data)
    if not result["exact"]:
        raise SystemExit(f"level {level}: the round trip of {spec} failed")
    return result | {
        "level": level,
        "learn": compressor.learning,
        "chunk_size": compressor.stats.chunk_size,
        "window": compressor.stats.window,
        "side_models": compressor.stats.side_models,
        "tokens": compressor.stats.tokens,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="paths, corpus file names or dataset ids")
    parser.add_argument("--levels", default=f"1,{DEFAULT_LEVEL}", help="comma-separated, or 'all'")
    parser.add_argument("--bytes", type=int, default=None, help="only this prefix of each input")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--learn", action=argparse.BooleanOptionalAction, help="llmzip --learn/--no-learn")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one level, print JSON
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.model, args.inputs[0], args.bytes, args.one, args.learn)))
        return
    levels = sorted(LEVELS) if args.levels == "all" else [int(n) for n in args.levels.split(",")]
    for spec in args.inputs:
        name, data = load_input(spec, args.bytes)
        rows = []
        for level in levels:
            command = [sys.executable, __file__, spec, "--one", str(level), "--model", args.model]
            command += ["--bytes", str(args.bytes)] if args.bytes else []
            command += [] if args.learn is None else ["--learn" if args.learn else "--no-learn"]
            row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            rows.append(row)
            print(
                f"{name} level {level} (chunks of {row['chunk_size']}, window {row['window']}): "
                f"{row['bits_per_byte']:.4f} bpb, compress {row['compress_bytes_per_s']} B/s, "
                f"decompress {row['decompress_bytes_per_s']} B/s, peak RSS {row['peak_rss_mb']} MB",
                flush=True,
            )
        report = {
            "machine": machine(),
            "settings": {"file": name, "bytes": len(data), "model": args.model, "levels": levels},
            "levels": rows,
            "baselines": baselines(data),
        }
        suffix = (f"_{args.bytes}" if args.bytes else "") + {None: "", True: "_learn", False: "_no-learn"}[args.learn]
        prefix = "" if args.model == DEFAULT_MODEL else f"{args.model}_"
        save(f"levels_{prefix}{name}{suffix}.json", report)


if __name__ == "__main__":
    main()
