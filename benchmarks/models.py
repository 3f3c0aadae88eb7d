"""Bits per byte and speed of each model, per file, against gzip, bzip2, xz, zstd and brotli.

    python benchmarks/models.py                                   # built-in models, corpus set
    python benchmarks/models.py --models smollm2-135m --files enwik5 --bytes 0
    python benchmarks/models.py --models ./my-model-dir,org/model-id --files book2 --bytes 20000
    python benchmarks/models.py --quick                           # 2 files x 2 KB, default model

Each (model, file, bytes) is compressed and decompressed with the model loaded once (load time
is reported apart), the round trip is checked, and the baselines run on the same bytes.
Rows accumulate in benchmarks/results/models.json (--quick: models_quick.json): a run replaces
the rows it measured again and keeps the others, so models and files can be run separately.
"""

from __future__ import annotations

import argparse
import json
import time

from common import RESULTS, baselines, command_line, load_input, machine, markdown_table, round_trip, save

from llmzip import Compressor, load_model
from llmzip.levels import FASTEST, LEVELS

FILES = [
    "enwik5", "enwik6", "alice29.txt", "dostoevsky_crime_and_punishment.head.ru.txt", "freud_imago1912.de.txt",
    "you_xue_qiong_lin.zh.txt", "kokoro.ja.txt", "mypy_checkexpr.py", "twitter.json", "Apache_2k.log",
]  # fmt: skip
BUILT_IN = "smollm2-135m,gemma3-270m"
COLUMNS = ["model", "file", "bytes", "bits_per_byte", *(f"{b} bpb" for b in ("xz -9e", "brotli -11", "zstd -19")),
           "compress_bytes_per_s", "decompress_bytes_per_s", "exact"]  # fmt: skip


def ordered(rows: list[dict]) -> list[dict]:
    """Built-in models first, whole files before prefixes, files in the corpus order."""
    models, files = BUILT_IN.split(","), {f: i for i, f in enumerate(FILES)}

    def key(r: dict) -> tuple:
        model = models.index(r["model"]) if r["model"] in models else len(models)
        return model, r["bytes"] != r["file_bytes"], files.get(r["file"], len(files)), -r["bytes"]

    return sorted(rows, key=key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=BUILT_IN, help="comma-separated aliases, HF ids, directories or .gguf")
    parser.add_argument("--files", default=",".join(FILES), help="comma-separated paths or corpus file names")
    parser.add_argument("--bytes", type=int, default=100_000, help="code this prefix of each file (0: all)")
    parser.add_argument("--chunk-size", type=int, default=LEVELS[FASTEST].chunk_size)
    parser.add_argument("--quick", action="store_true", help="2 KB of 2 files with the default model")
    args = parser.parse_args()
    if args.quick:
        args.models, args.files, args.bytes = "smollm2-135m", "enwik5,mypy_checkexpr.py", 2000
    name = "models_quick.json" if args.quick else "models.json"
    old = json.loads((RESULTS / name).read_text()) if (RESULTS / name).exists() else {"rows": []}
    inputs = [(*load_input(spec, args.bytes or None), len(load_input(spec)[1])) for spec in args.files.split(",")]

    rows = []
    for model in args.models.split(","):
        started = time.perf_counter()
        loaded = load_model(model)
        load_s = round(time.perf_counter() - started, 1)
        params = sum(p.numel() for p in loaded.model.parameters())
        compressor = Compressor(loaded, chunk_size=args.chunk_size)
        for file, data, file_bytes in inputs:
            row = {"model": model, "params": params, "file": file, "bytes": len(data), "file_bytes": file_bytes}
            row["command"] = command_line()
            row["load_s"] = load_s
            row |= round_trip(compressor, data)
            row |= {"chunk_size": args.chunk_size, "precision": compressor.precision, "threads": compressor.threads}
            row["baselines"] = baselines(data)
            row |= {f"{b} bpb": v["bits_per_byte"] for b, v in row["baselines"].items()}
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False), flush=True)
    measured = {(r["model"], r["file"], r["bytes"]) for r in rows}
    kept = [r for r in old["rows"] if (r["model"], r["file"], r["bytes"]) not in measured]
    report = {"machine": machine(), "rows": ordered(kept + rows)}
    print(f"\nwritten to {save(name, report)}\n")
    print(markdown_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
