"""Round-trip benchmark through the real CLI: bits per byte, header bytes, speed, peak RSS, vs xz -9e.

    python benchmarks/roundtrip.py ../shared/corpus/enwik5 ../shared/corpus/alice29.txt [--model M]

Each direction runs as its own `llmzip` process, timed with its peak RSS (os.wait4). Start-up
(imports and model load) is measured by compressing an empty file, after one such run that may
build the kernels, and subtracted to give the coding speed; the wall time is printed too.
Results go to benchmarks/results/roundtrip.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, save


def run_timed(args: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one command, which must succeed."""
    started = time.perf_counter()
    proc = subprocess.Popen(args)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(args)}")
    return seconds, usage.ru_maxrss * 1024


def llmzip(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmzip", *args, "-q", "-f"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--options", default="", help="extra compress options, e.g. '--batch-size 8 --threads 2'")
    args = parser.parse_args()
    extra = args.options.split()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp, "empty")
        empty.write_bytes(b"")
        run_timed(llmzip("compress", str(empty), "--model", args.model, *extra))  # may build the kernels, once
        startup, _ = run_timed(llmzip("compress", str(empty), "--model", args.model, *extra))
        for path in args.files:
            data = path.read_bytes()
            archive, restored = Path(tmp, path.name + ".lz"), Path(tmp, path.name + ".out")
            c_wall, c_rss = run_timed(llmzip("compress", str(path), "-o", str(archive), "--model", args.model, *extra))
            d_wall, d_rss = run_timed(llmzip("decompress", str(archive), "-o", str(restored)))
            exact = hashlib.sha256(restored.read_bytes()).digest() == hashlib.sha256(data).digest()
            info = subprocess.run(llmzip("info", str(archive))[:-2], capture_output=True, text=True, check=True).stdout
            header_bytes = int(info.split("header: ")[1].split()[0])
            size = archive.stat().st_size
            xz = len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
            rows.append(
                {
                    "file": path.name,
                    "bytes": len(data),
                    "archive_bytes": size,
                    "header_bytes": header_bytes,
                    "bits_per_byte": 8 * size / len(data),
                    "xz_9e_bits_per_byte": 8 * xz / len(data),
                    "round_trip_exact": exact,
                    "compress_wall_s": c_wall,
                    "decompress_wall_s": d_wall,
                    "compress_bytes_per_s": len(data) / max(c_wall - startup, 1e-9),
                    "decompress_bytes_per_s": len(data) / max(d_wall - startup, 1e-9),
                    "compress_peak_rss_mb": c_rss / 2**20,
                    "decompress_peak_rss_mb": d_rss / 2**20,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    report = {
        "machine": machine(),
        "model": args.model,
        "options": args.options,
        "startup_s": startup,
        "rows": rows,
    }
    save("roundtrip.json", report)
    print(f"\nmodel {args.model} {args.options}; start-up (imports + model load) {startup:.1f} s, subtracted for B/s")
    print("| file | bytes | archive | header | bits/byte | xz -9e | exact | compress B/s | decompress B/s | RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['file']} | {r['bytes']} | {r['archive_bytes']} | {r['header_bytes']} | {r['bits_per_byte']:.3f} | "
            f"{r['xz_9e_bits_per_byte']:.3f} | {r['round_trip_exact']} | {r['compress_bytes_per_s']:.0f} | "
            f"{r['decompress_bytes_per_s']:.0f} | {max(r['compress_peak_rss_mb'], r['decompress_peak_rss_mb']):.0f} |"
        )


if __name__ == "__main__":
    main()
