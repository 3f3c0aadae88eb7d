"""Peak memory of compress and decompress against input size (does it stay flat?).

    python benchmarks/memory.py                                  # tiny and default model
    python benchmarks/memory.py --models tiny --sizes 100000,1000000,10000000
    python benchmarks/memory.py --models smollm2-135m --sizes 10000000 --time-limit 300
    python benchmarks/memory.py --quick                          # tiny model, 10 KB and 100 KB

Each input is a corpus file (default enwik6) repeated to the size. Each run is the CLI,
`python -m llmzip compress|decompress`, in a fresh process on files, and its peak RSS is the
kernel's (wait4's ru_maxrss). `tiny` is the tests' randomly initialised 2-layer model, saved
as a local Hugging Face directory. With --time-limit, a compress still running then is stopped
(SIGTERM) and its peak so far reported, marked partial (no decompress follows): the input is
read and tokenized before the first batch is coded, so a partial run has met every cost that
could grow with the input except the payloads, which go to a temporary file.
Runs accumulate in benchmarks/results/memory.json: a run replaces the (model, size) rows it
measured again and keeps the others.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

from common import RESULTS, command_line, load_input, machine, markdown_table, save

from llmzip import LoadedModel, load_model
from llmzip.chunking import DEFAULT_BATCH_SIZE, TokenChunks
from llmzip.compressor import balanced_batch_size
from llmzip.container import MIN_ROWS
from llmzip.levels import FASTEST, LEVELS
from llmzip.predictor import cache_bytes, default_precision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # conftest's tiny model

COLUMNS = ["model", "bytes", "rows", "kv_cache_mb", "step", "peak_rss_mb", "seconds", "archive_bytes", "exact"]


def tiny_model_dir(folder: Path) -> str:
    from conftest import byte_level_tokenizer, tiny_model

    tiny = tiny_model(byte_level_tokenizer())
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.tokenizer.save_pretrained(folder)
    return str(folder)


def geometry(loaded: LoadedModel, data: bytes) -> dict[str, int]:
    """Rows per step and their KV cache at the CLI's defaults: what, besides the model, memory
    should depend on (computed, not measured)."""
    with closing(TokenChunks(io.BytesIO(data), loaded.tokenizer, LEVELS[FASTEST].chunk_size)) as chunks:
        rows = max(MIN_ROWS, balanced_batch_size(len(chunks), DEFAULT_BATCH_SIZE))
    kv = cache_bytes(loaded.model, default_precision(loaded.architecture), rows, LEVELS[FASTEST].chunk_size)
    return {"rows": rows, "kv_cache_mb": round(kv / 1e6)}


def run_cli(args: list[str], time_limit: float | None) -> dict:
    """Run the CLI; its peak RSS (MB), seconds, and whether the time limit stopped it."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "llmzip", *args, "-q", "-f"])
    partial = False
    while (done := os.wait4(process.pid, os.WNOHANG))[0] == 0:
        if time_limit and time.perf_counter() - started > time_limit and not partial:
            process.send_signal(signal.SIGTERM)
            partial = True
        time.sleep(0.2)
    _, status, usage = done
    process.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    if process.returncode and not partial:
        raise SystemExit(f"llmzip {' '.join(args)} failed with exit code {process.returncode}")
    return {
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "seconds": round(time.perf_counter() - started, 1),
        "partial": partial,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,smollm2-135m", help="tiny, aliases, HF ids or directories")
    parser.add_argument("--sizes", default="100000,1000000,10000000", help="input sizes in bytes")
    parser.add_argument("--file", default="enwik6", help="a path or corpus file, repeated to each size")
    parser.add_argument("--time-limit", type=float, default=None, help="stop a compress after this many seconds")
    parser.add_argument("--quick", action="store_true", help="tiny model, 10 KB and 100 KB")
    args = parser.parse_args()
    if args.quick:
        args.models, args.sizes = "tiny", "10000,100000"
    name, source = load_input(args.file)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for model in args.models.split(","):
            model_arg = tiny_model_dir(work / "tiny") if model == "tiny" else model
            loaded = load_model(model_arg)  # for the geometry, once per model
            for size in map(int, args.sizes.split(",")):
                data = (source * (size // len(source) + 1))[:size]
                original, archive, restored = work / "input", work / "input.lz", work / "restored"
                original.write_bytes(data)
                rows = [{"step": "compress"} | run_cli(["compress", str(original), "-o", str(archive),
                                                        "--model", model_arg], args.time_limit)]  # fmt: skip
                rows[0]["archive_bytes"] = archive.stat().st_size if archive.exists() else None
                if not rows[0]["partial"]:
                    decompress = ["decompress", str(archive), "-o", str(restored)]
                    rows.append({"step": "decompress"} | run_cli(decompress, None))
                    rows[-1]["exact"] = rows[0]["exact"] = restored.read_bytes() == data
                where = {"model": model, "file": name, "bytes": size} | geometry(loaded, data)
                for row in rows:
                    runs.append(where | row | {"command": command_line()})
                    print(runs[-1], flush=True)
                for path in (archive, restored):
                    path.unlink(missing_ok=True)
    output = "memory_quick.json" if args.quick else "memory.json"
    old = json.loads((RESULTS / output).read_text())["runs"] if (RESULTS / output).exists() else []
    measured = {(r["model"], r["bytes"]) for r in runs}
    kept = [r for r in old if (r["model"], r["bytes"]) not in measured]
    print(f"\nwritten to {save(output, {'machine': machine(), 'runs': kept + runs})}\n")
    print(markdown_table(runs, COLUMNS))


if __name__ == "__main__":
    main()
