"""The long fuzz run: thousands of mutants of real archives, decoded with the tiny model.

    .venv/bin/python tests/fuzz/run.py --cases 10000

Archives of several inputs (text over several chunks and batches, a raw chunk, an escape-heavy
byte string, steering in the header) are mutated by tests/fuzz/mutations.py. Each mutant must
decode exactly or raise an llmzip error within --timeout seconds. Prints the count of each
outcome per mutation and exits 1 if any mutant gave wrong output, another exception or a hang.
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))  # tests/: conftest's tiny models, fuzz/

from conftest import byte_level_tokenizer, tiny_model
from fuzz.mutations import Layout, mutants, verdict
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from llmzip import Compressor

INPUTS = {
    "text": b"the rain and the sun\r\n" * 40,
    "mixed": b"the rain\n" * 20 + bytes(range(256)) + "écrit 雨".encode() * 5,
    "steered": b"steering travels in the header. " * 12,
}


class Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hang


def fuzz(
    name: str,
    layout: Layout,
    original: bytes,
    cases: int,
    timeout: float,
    decoder: Compressor,
    counts: collections.Counter[tuple[str, str]],
    failures: list[str],
) -> None:
    """Decode `cases` mutants of one archive; count each (mutation, outcome), note each failure."""

    @settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.generate])  # fmt: skip
    @given(st.data())
    def case(data: st.DataObject) -> None:
        mutation, mutant = data.draw(mutants(layout))
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            outcome = verdict(decoder.decompress, original, mutant)
        except Hang:
            outcome = "hang"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        counts[mutation, outcome] += 1
        if outcome not in ("exact", "llmzip error"):
            failures.append(f"{name}/{mutation}: {outcome}; mutant {mutant.hex()}")

    case()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="mutants in all, spread over the inputs")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds a mutant may take to decode")
    args = parser.parse_args()
    model = tiny_model(byte_level_tokenizer())
    plain = Compressor(model, chunk_size=64, batch_size=4, threads=1)
    steered = Compressor(model, chunk_size=64, batch_size=4, threads=1, steer="random:2")
    archives = {name: (steered if name == "steered" else plain).compress(data) for name, data in INPUTS.items()}
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    failures: list[str] = []
    signal.signal(signal.SIGALRM, _alarm)
    started = time.perf_counter()

    for name, archive in archives.items():
        fuzz(name, Layout.of(archive), INPUTS[name], args.cases // len(archives), args.timeout, plain, counts, failures)

    print(f"{sum(counts.values())} mutants of {len(archives)} archives in {time.perf_counter() - started:.0f} s")
    for mutation in sorted({m for m, _ in counts}):
        outcomes = ", ".join(f"{o} {c}" for (m, o), c in sorted(counts.items()) if m == mutation)
        print(f"  {mutation:22} {outcomes}")
    bad = collections.Counter(o.split(":")[0] for (_, o), c in counts.items() for _ in range(c))
    print(f"wrong outputs: {bad['wrong output']}, other exceptions: {bad['exception']}, hangs: {bad['hang']}")
    for line in failures[:20]:
        print("FAIL", line[:400])
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
