"""Small files decoded: wall time of `llmzip decompress` with this checkout against an earlier
commit, in the same run, alternating (medians), on archives both commits make byte for byte
(checked: a decoder speed-up must not change the format).

    python benchmarks/small_files.py alice29.txt Apache_2k.log --bytes 10000 40000 --baseline 840c6d5

A small input has few chunks, so each decoding step has few rows and streams every weight of
the model for a few tokens: this measures the per-step cost the large-input benchmarks hide.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import load_input, machine, machine_tag, save

from llmzip.aliases import DEFAULT_MODEL

ROOT = Path(__file__).parent.parent


def llmzip(checkout: Path) -> list[str]:
    """The command line of the llmzip in `checkout` (its package first on the path)."""
    return [
        sys.executable,
        "-c",
        f"import sys; sys.path.insert(0, {str(checkout)!r}); from llmzip.cli import main; main()",
    ]


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    if done.returncode:
        sys.exit(f"{' '.join(args[3:])} failed: {done.stderr.strip()}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="files, or files of the corpus folder")
    parser.add_argument("--bytes", type=int, nargs="+", default=[40_000], help="leading bytes of each input")
    parser.add_argument("--baseline", required=True, help="the git revision to compare with")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--repeat", type=int, default=1, help="decodes by each commit, alternating")
    args = parser.parse_args()
    revision = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline], check=True, capture_output=True, text=True
    ).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp, "baseline")
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base), revision], check=True)
        try:
            for checkout in (base, ROOT):  # kernels built and the model prepared before anything is timed
                subprocess.run([*llmzip(checkout), "prepare", args.model, "-q"], check=True)
            for spec, nbytes in itertools.product(args.inputs, args.bytes):
                name, data = load_input(spec, nbytes)
                sample = Path(tmp, f"{len(data)}", name)
                sample.parent.mkdir(exist_ok=True)
                sample.write_bytes(data)
                archives = {}
                for label, checkout in (("baseline", base), ("this", ROOT)):
                    archives[label] = sample.with_name(f"{name}.{label}.lz")
                    subprocess.run(
                        [*llmzip(checkout), "compress", str(sample), "-o", str(archives[label]), "-q", "--model",
                         args.model],
                        check=True,
                    )  # fmt: skip
                identical = archives["baseline"].read_bytes() == archives["this"].read_bytes()
                seconds: dict[str, list[float]] = {"baseline": [], "this": []}
                for _ in range(args.repeat):
                    for label, checkout in (("baseline", base), ("this", ROOT)):
                        out = sample.with_name(f"{name}.{label}.out")
                        seconds[label].append(
                            timed([*llmzip(checkout), "decompress", str(archives["this"]), "-o", str(out), "-f", "-q"])
                        )
                        assert out.read_bytes() == data, f"{label} decoded {name} wrong"
                base_s, this_s = (statistics.median(seconds[k]) for k in ("baseline", "this"))
                row = {
                    "file": name,
                    "bytes": len(data),
                    "archive_bytes": archives["this"].stat().st_size,
                    "archives_identical": identical,
                    "baseline_s": round(base_s, 2),
                    "this_s": round(this_s, 2),
                    "speedup": round(base_s / this_s, 2),
                }
                print(row, flush=True)
                rows.append(row)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=True)
    info = machine()
    report = {
        "command": "python benchmarks/small_files.py " + " ".join(sys.argv[1:]),
        "machine": info,
        "model": args.model,
        "baseline": revision,
        "repeat": args.repeat,
        "rows": rows,
    }
    print(save(f"small_files_{machine_tag(info)}.json", report))


if __name__ == "__main__":
    main()
