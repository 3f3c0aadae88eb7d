"""An archive decodes to the same bytes whatever the decoding process's flags and thread settings:
the header's geometry (rows, threads, precision) is reproduced. Encode flags x decode flags."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest

from llmzip import container

TEXT = ("the rain and the sun, écrit 雨. " * 60).encode() + bytes(range(256))
ENCODE = {  # name: compress flags
    "batch 2, 1 thread, fp32": ["--batch-size", "2", "--threads", "1", "--precision", "fp32"],
    "batch 8, 2 threads, bf16": ["--batch-size", "8", "--threads", "2", "--precision", "bf16"],
    "batch 64, default threads": [],
}
DECODE = {  # name: (environment, decompress flags, python code run first)
    "flags --batch-size 1 --threads 1": ({}, ["--batch-size", "1", "--threads", "1"], ""),
    "OMP_NUM_THREADS=1": ({"OMP_NUM_THREADS": "1"}, [], ""),
    "OMP_NUM_THREADS=2 --threads 2": ({"OMP_NUM_THREADS": "2"}, ["--threads", "2"], ""),
    "torch.set_num_threads(1)": ({}, [], "import torch; torch.set_num_threads(1); "),
}
CLI = "import sys; from llmzip.cli import main; sys.argv[0] = 'llmzip'; main()"


@pytest.fixture(scope="module")
def archives(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("portability")
    source = folder / "text"
    source.write_bytes(TEXT)
    made = {}
    for k, (name, flags) in enumerate(ENCODE.items()):
        out = folder / f"{k}.lz"
        subprocess.run([sys.executable, "-m", "llmzip", "compress", str(source), "-o", str(out), "--model", tiny_dir,
                        "--chunk-size", "48", "-q", *flags], check=True)  # fmt: skip
        made[name] = out
    return made


@pytest.mark.parametrize(("encoded", "decoded"), list(itertools.product(ENCODE, DECODE)))
def test_matrix(archives, tmp_path, encoded, decoded):
    env, flags, prelude = DECODE[decoded]
    archive = archives[encoded]
    out = tmp_path / "out"
    command = [sys.executable, "-c", prelude + CLI, "decompress", str(archive), "-o", str(out), "-q", *flags]
    subprocess.run(command, check=True, env=os.environ | env)
    assert out.read_bytes() == TEXT
    header, _ = container.unpack(archive.read_bytes())
    assert header.rows >= 4
