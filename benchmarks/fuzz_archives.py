"""The long fuzz run: thousands of mutants of real archives, decoded with the tiny model.

    python benchmarks/fuzz_archives.py --cases 10000
    python benchmarks/fuzz_archives.py --quick                 # 150 cases

Archives of several inputs (text over several chunks and batches, a raw chunk, an escape-heavy
byte string, steering in the header) are mutated by tests/fuzz/mutations.py. Each mutant must
decode exactly or raise an llmzip error within --timeout seconds. Prints the count of each
outcome per mutation and exits 1 if any mutant gave wrong output, another exception or a hang.
Counts go to benchmarks/results/fuzz.json (--quick: fuzz_quick.json). tests/test_fuzz.py is
the short run CI does.
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import time
from pathlib import Path

from common import machine, save

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # conftest's tiny models, fuzz/

from conftest import byte_level_tokenizer, tiny_model
from fuzz.mutations import VIA, Layout, decoder, mutants, verdict
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from llmzip import Compressor

INPUTS = {
    "text": b"the rain and the sun\r\n" * 40,
    "mixed": b"the rain\n" * 20 + bytes(range(256)) + "écrit 雨".encode() * 5,
    "steered": b"steering travels in the header. " * 12,
}


class Hang(BaseException):
    """Raised by the alarm; not an Exception, so that `verdict` does not count it as one."""


def _alarm(signum: int, frame: object) -> None:
    raise Hang


def fuzz(
    name: str,
    layout: Layout,
    original: bytes,
    cases: int,
    timeout: float,
    compressor: Compressor,
    counts: collections.Counter[tuple[str, str, str]],
    failures: list[str],
) -> None:
    """Decode `cases` mutants of one archive, read as a file or a pipe; count each (mutation, via,
    outcome), note each failure."""

    @settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.generate])  # fmt: skip
    @given(st.data())
    def case(data: st.DataObject) -> None:
        mutation, mutant = data.draw(mutants(layout))
        via = data.draw(st.sampled_from(VIA))
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            outcome = verdict(decoder(compressor, via), original, mutant)
        except Hang:
            outcome = "hang"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        counts[mutation, via, outcome] += 1
        if outcome not in ("exact", "llmzip error"):
            failures.append(f"{name}/{mutation} via {via}: {outcome}; mutant {mutant.hex()}")

    case()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="mutants in all, spread over the inputs")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds a mutant may take to decode")
    parser.add_argument("--quick", action="store_true", help="150 cases")
    args = parser.parse_args()
    if args.quick:
        args.cases = 150
    model = tiny_model(byte_level_tokenizer())
    plain = Compressor(model, chunk_size=64, batch_size=4, threads=1)
    steered = Compressor(model, chunk_size=64, batch_size=4, threads=1, steer="random:2")
    archives = {name: (steered if name == "steered" else plain).compress(data) for name, data in INPUTS.items()}
    signal.signal(signal.SIGALRM, _alarm)
    started = time.perf_counter()
    rows, failures = [], []
    for name, archive in archives.items():
        counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        fuzz(name, Layout.of(archive), INPUTS[name], args.cases // len(archives), args.timeout, plain, counts, failures)
        for (mutation, via, outcome), cases in sorted(counts.items()):
            rows.append({"input": name, "mutation": mutation, "via": via, "outcome": outcome, "cases": cases})
    seconds = time.perf_counter() - started

    total = collections.Counter()
    for row in rows:
        total[row["mutation"], row["outcome"]] += row["cases"]
    print(f"{total.total()} mutants of {len(archives)} archives in {seconds:.0f} s")
    for mutation in sorted({m for m, _ in total}):
        outcomes = ", ".join(f"{o} {c}" for (m, o), c in sorted(total.items()) if m == mutation)
        print(f"  {mutation:22} {outcomes}")
    bad = collections.Counter()
    for (_, outcome), c in total.items():
        bad[outcome.split(":")[0]] += c
    summary = {"wrong output": bad["wrong output"], "other exception": bad["exception"], "hang": bad["hang"]}
    print(", ".join(f"{k}: {v}" for k, v in summary.items()))
    for line in failures[:20]:
        print("FAIL", line[:400])
    report = {"machine": machine(), "cases": total.total(), "seconds": round(seconds), "timeout_s": args.timeout}
    report |= {"failures": summary, "inputs": {n: len(d) for n, d in INPUTS.items()}, "rows": rows}
    print(f"written to {save('fuzz_quick.json' if args.quick else 'fuzz.json', report)}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
