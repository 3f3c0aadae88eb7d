"""`--model auto`'s probe on each file: the bits per byte each built-in model codes the probe in,
the model each level takes, and what the probe costs (the first file's time includes loading
both models; the rest reuse them, as `corpus.py` does).

    python benchmarks/model_choice.py                  # every file of the corpus folder
    python benchmarks/model_choice.py kokoro.ja.txt notes.txt

Whole-file sizes with the chosen model: corpus.py (its default is `--model auto`).
"""

from __future__ import annotations

import argparse
import io
import time

from common import load_input, machine, machine_tag, save
from corpus import corpus_files

from llmzip import tune_process
from llmzip.levels import LEVELS
from llmzip.model_choice import CANDIDATES, choose, pick, probe_pieces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="*", help="paths or corpus file names (default: the whole corpus)")
    args = parser.parse_args()
    tune_process()
    loaded, rows = {}, []
    for spec in args.inputs or corpus_files():
        name, data = load_input(spec)
        started = time.perf_counter()
        _, choice = choose(probe_pieces(io.BytesIO(data), len(data)), max(LEVELS), "cpu", loaded)
        seconds = time.perf_counter() - started
        row = {"file": name, "bytes": len(data), "probe_seconds": round(seconds, 1)}
        if choice is not None:
            row["probe_bytes"] = choice.probe_bytes
            row["bits_per_byte"] = {m: round(b / choice.probe_bytes, 4) for m, b in choice.probe_bits.items()}
            row["chosen"] = {f"-{n}": pick(choice.probe_bits, level.auto_gain) for n, level in LEVELS.items()}
        rows.append(row)
        figures = ", ".join(f"{m} {b}" for m, b in row.get("bits_per_byte", {}).items()) or "not probed"
        taken = " ".join(f"{level} {m}" for level, m in row.get("chosen", {}).items())
        print(f"{name}: {figures} bits/byte; {taken} ({seconds:.1f} s)", flush=True)
    report = {"machine": machine(), "settings": {"candidates": list(CANDIDATES)}, "rows": rows}
    save(f"model_choice_{machine_tag(report['machine'])}.json", report)


if __name__ == "__main__":
    main()
