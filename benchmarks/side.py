"""Side models' gain per kind of file: the same level coded with and without them (llmzip/side/),
bits per byte of the real archives, compress bytes/s both ways, and the side models' archive
decoded and checked.

    python benchmarks/side.py enwik5 alice29.txt twitter.json --bytes 50000 --no-decompress
    python benchmarks/side.py Apache_2k.log

One process, the model loaded once; results go to benchmarks/results/side_models[_<bytes>][_<file>].json
(the file's name where only one is given).
"""

from __future__ import annotations

import argparse

from common import baselines, load_input, machine, round_trip, save

from llmzip import Compressor, load_model
from llmzip.aliases import DEFAULT_MODEL
from llmzip.levels import DEFAULT_LEVEL

KINDS = {  # what the corpus files hold (../shared/corpus/MANIFEST.md)
    "enwik5": "Wikipedia markup",
    "enwik6": "Wikipedia markup",
    "alice29.txt": "English prose",
    "Apache_2k.log": "server log",
    "twitter.json": "JSON",
    "mypy_checkexpr.py": "Python code",
    "dostoevsky_crime_and_punishment.head.ru.txt": "Russian prose",
    "freud_imago1912.de.txt": "German prose",
    "you_xue_qiong_lin.zh.txt": "Chinese prose",
    "kokoro.ja.txt": "Japanese prose",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="paths, corpus file names or dataset ids")
    parser.add_argument("--bytes", type=int, default=None, help="only this prefix of each input")
    parser.add_argument("--level", type=int, default=DEFAULT_LEVEL)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument(
        "--no-decompress", action="store_true", help="skip decoding (small inputs decode few rows at a time, slowly)"
    )
    args = parser.parse_args()
    model = load_model(args.model)
    rows = []
    for spec in args.inputs:
        name, data = load_input(spec, args.bytes)
        row: dict[str, object] = {"file": name, "kind": KINDS.get(name, ""), "bytes": len(data)}
        for side_models in (False, True):
            compressor = Compressor(model, level=args.level, side_models=side_models)
            result = round_trip(compressor, data, verify=side_models and not args.no_decompress)
            if result["exact"] is False:
                raise SystemExit(f"{name}: the round trip with side models failed")
            key = "with_side_models" if side_models else "without"
            row[key] = result
            if side_models:
                row["side_models_version"] = compressor.stats.side_models
        row["gain_percent"] = round(
            100 * (1 - row["with_side_models"]["archive_bytes"] / row["without"]["archive_bytes"]), 2
        )
        row["baselines"] = baselines(data)
        rows.append(row)
        on, off, base = row["with_side_models"], row["without"], row["baselines"]
        print(
            f"{name} ({len(data)} bytes): {off['bits_per_byte']:.4f} -> {on['bits_per_byte']:.4f} bpb "
            f"({row['gain_percent']:+.2f}%), compress {off['compress_bytes_per_s']} -> "
            f"{on['compress_bytes_per_s']} B/s, decompress {on['decompress_bytes_per_s']} B/s, exact {on['exact']}; "
            f"brotli -11 {base['brotli -11']['bits_per_byte']}, xz -9e {base['xz -9e']['bits_per_byte']}",
            flush=True,
        )
    report = {
        "machine": machine(),
        "settings": {
            "level": args.level,
            "model": args.model,
            "bytes": args.bytes,
            "decompressed": not args.no_decompress,
        },
        "files": rows,
    }
    named = f"_{rows[0]['file']}" if len(rows) == 1 else ""  # one file's run keeps the others' results
    save(f"side_models{f'_{args.bytes}' if args.bytes else ''}{named}.json", report)


if __name__ == "__main__":
    main()
