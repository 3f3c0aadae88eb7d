"""What a user waits for besides coding: the first run's work (kernel build, model fetch, conversion,
weight preparation of every model `--model auto` may take, each timed from the notices `llmzip
prepare` prints, in a fresh cache), and the wall time of commands on a small input once everything
is cached (with `import torch` alone, the floor of any command that codes). Also checks that the
kernels are never built again when PATH changes (the venv's bin/ first on it, then not, five
times each).

    python benchmarks/startup.py alice29.txt --bytes 1000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import load_input, machine, machine_tag, save

from llmzip.aliases import DEFAULT_MODEL
from llmzip.exact import arithmetic, build
from llmzip.model_choice import CANDIDATES

LLMZIP = str(Path(sys.executable).with_name("llmzip"))
PHASES = {  # the notice that starts each phase of a first run
    "building the exact kernels": "kernel build",
    "fetching model": "model fetch",
    "converting": "GGUF conversion",
    "preparing the exact weights": "weight preparation",
}


def first_run() -> dict[str, float]:
    """Seconds of each phase of `llmzip prepare` (every model `--model auto` may take) in a fresh
    cache (pip's own cache of wheels is the user's); phases named with their model."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "LLMZIP_CACHE_DIR": cache}
        started = time.perf_counter()
        proc = subprocess.Popen([LLMZIP, "prepare"], stderr=subprocess.PIPE, text=True, env=env)
        marks = []
        for line in proc.stderr:
            marks.append((time.perf_counter() - started, line.strip()))
        assert proc.wait() == 0, marks
        total = time.perf_counter() - started
    phases, model = {}, None
    for (at, line), (end, _) in zip(marks, [*marks[1:], (total, "")], strict=True):
        model = next((m for m in CANDIDATES if m in line), model)  # a conversion names the file, not the model
        name = next((p for notice, p in PHASES.items() if notice in line), None)
        if name:
            phases[name if name == "kernel build" else f"{name}, {model}"] = round(end - at, 1)
    return phases | {"total": round(total, 1)}


def wall(args: list[str], repeat: int, env: dict[str, str] | None = None) -> float:
    """Median wall seconds of a command."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="a file, or a file of the corpus folder")
    parser.add_argument("--bytes", type=int, default=1000, help="leading bytes coded")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-first-run", action="store_true", help="skip the fresh-cache run")
    args = parser.parse_args()
    name, data = load_input(args.input, args.bytes)
    subprocess.run([LLMZIP, "prepare", args.model, "-q"], check=True)  # the user's cache, ready
    with tempfile.TemporaryDirectory() as tmp:
        sample, archive, out = Path(tmp, name), Path(tmp, name + ".lz"), Path(tmp, "out")
        sample.write_bytes(data)
        coded = [LLMZIP, "compress", str(sample), "-o", str(archive), "-f", "-q", "--model", args.model]
        decoded = [LLMZIP, "decompress", str(archive), "-o", str(out), "-f", "-q"]
        startup = {
            "import torch": wall([sys.executable, "-c", "import torch"], args.repeat),
            "llmzip --help": wall([LLMZIP, "--help"], args.repeat),
            f"llmzip compress ({len(data)} B)": wall(coded, args.repeat),
            "llmzip info": wall([LLMZIP, "info", str(archive)], args.repeat),
            f"llmzip decompress ({len(data)} B)": wall(decoded, args.repeat),
        }
        assert out.read_bytes() == data
    library = build.build_directory(arithmetic.KERNEL_DEFINES) / f"{build.NAME}.so"
    before = library.stat().st_mtime_ns
    venv = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    bare = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != str(Path(sys.executable).parent))
    for path in (venv, bare) * 5:
        subprocess.run([LLMZIP, "prepare", args.model, "-q"], check=True, env={**os.environ, "PATH": path})
    report = {
        "machine": machine(),
        "model": args.model,
        "input": name,
        "bytes": len(data),
        "startup_s": startup,
        "first_run_s": None if args.no_first_run else first_run(),
        "kernel_builds_over_10_path_changes": int(library.stat().st_mtime_ns != before),
    }
    path = save(f"startup_{machine_tag(report['machine'])}.json", report)
    print(path.read_text())


if __name__ == "__main__":
    main()
