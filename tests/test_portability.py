"""Archives open on any machine: every exact archive decodes bit-exactly in another process under
other CPU kernels (torch's ATEN_CPU_CAPABILITY, oneDNN's DNNL_MAX_CPU_ISA, MKL's
MKL_ENABLE_INSTRUCTIONS, and without llmzip's fused kernels), thread counts and batch sizes,
whether it was made just now (teacher-forced, in this process) or once, on some other machine
(the golden archives under tests/golden, made by the CPUs named below); and learning takes the
same steps everywhere. One process per environment checks all of it.

Set LLMZIP_WRITE_GOLDEN=1 to make the missing golden archives (only when the format or the exact
arithmetic changes on purpose: CI decodes the committed ones on whatever machine it runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_learning import learning_digest

from llmzip import Compressor, container

pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).parent / "golden"
TEXTS = {  # the tiny model codes only its few merged words below 8 bits a byte
    "smollm2-135m": (GOLDEN / "alice1200.txt").read_bytes(),
    "tiny": ("the rain and the sun in Привет мир, " * 12).encode(),
}
CPU = torch.backends.cpu.get_cpu_capability()  # the best kernel level this CPU runs (forcing more: SIGILL)
ENVIRONMENTS = {
    "as installed": {},
    "LLMZIP_KERNELS=0": {"LLMZIP_KERNELS": "0"},  # the torch reference path of every kernel
    "ATEN_CPU_CAPABILITY=default": {"ATEN_CPU_CAPABILITY": "default"},
    "ATEN_CPU_CAPABILITY=avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "DNNL_MAX_CPU_ISA=SSE41": {"DNNL_MAX_CPU_ISA": "SSE41"},
    "DNNL_MAX_CPU_ISA=AVX2": {"DNNL_MAX_CPU_ISA": "AVX2"},
    "MKL_ENABLE_INSTRUCTIONS=SSE4_2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "ATEN_CPU_CAPABILITY=avx512": {"ATEN_CPU_CAPABILITY": "avx512"},  # last: skipped on AVX2 CPUs
}
# (threads, batch size): each environment decodes at one, in turn, so that the plain golden archives
# meet every geometry (without the last environment too), and the others 1 and 2 threads and each
# batch size. Archives with side models or learning run their encoder's batches whatever the batch.
GEOMETRIES = [(1, 1), (2, 7), (2, 64), (1, 64), (2, 1), (1, 7)]

# Short chunks; chunks of 600 tokens with a window of 8, longer than the KV cache holds
# (sinks + window + kvcache.SLACK), so that the decoder's cache slides; side models over
# batches of 2 chunks; both, made after the Llama's forward 4 and the Gemma's forward 3 (sinks
# pinned before the window): "-window" and "-side" keep the Llama's forward 3 and the Gemma's 2.
TINY_ARCHIVES = {
    "": (TEXTS["tiny"], {"chunk_size": 24, "steer": "random:2", "level": 1}),
    "-window": (TEXTS["tiny"] * 3, {"chunk_size": 600, "window": 8, "steer": "random:2"}),
    "-side": (TEXTS["tiny"] * 3, {"chunk_size": 300, "window": 8, "batch_size": 2, "steer": "random:2"}),
    "-pinned": (TEXTS["tiny"] * 3, {"chunk_size": 600, "window": 8, "batch_size": 2, "steer": "random:2"}),
}
# As llmzip wrote them before side models version 4 (no token n-grams) and, for the Llama, before
# its forward 3 (10-bit keys): golden only.
LEGACY_ARCHIVES = {"-side-v3": TINY_ARCHIVES["-side"][0]}
# Short chunks (made on an Intel Xeon), and the default level's side models over the text twice in
# chunks of 300 tokens with a window of 8, so that the cache slides (made on an AMD EPYC), by
# forward 3 and again by forward 4 (sinks pinned before the window; made on an AMD EPYC Zen 4).
SMOLLM2_ARCHIVES = {
    "": (TEXTS["smollm2-135m"], {"chunk_size": 128}),
    "-window": (TEXTS["smollm2-135m"] * 2, {"chunk_size": 300, "window": 8}),
    "-pinned": (TEXTS["smollm2-135m"] * 2, {"chunk_size": 300, "window": 8}),
}
# gemma3-270m (sliding-window layers, 262 144-token vocabulary): teacher-forced, decoded by KV
# steps under the scalar kernels (loading it takes 15 s).
GEMMA3_ARCHIVE = TEXTS["smollm2-135m"][:600], {"chunk_size": 64}
GEMMA3_ENVIRONMENT = "ATEN_CPU_CAPABILITY=default"
# The torch code (the kernels' definition) takes minutes over a real model's archives: the tiny
# models' golden archives and learning check that path there, tests/test_exact.py every kernel.
REFERENCE_PATH = "LLMZIP_KERNELS=0"
# Where the tiny models' windowed, side-model and fresh archives decode too: the settings that
# change the float kernels most (elsewhere, their plain golden archives).
FLOAT_CHANGERS = ("as installed", "ATEN_CPU_CAPABILITY=default", "DNNL_MAX_CPU_ISA=SSE41")

# Decodes each job's archive at each of its geometries, model by model, then takes the learning
# steps; prints what it saw.
WORKER = """
import json, sys, torch
import llmzip
llmzip.tune_process()
sys.path.insert(0, sys.argv[1])
from test_learning import learning_digest
from llmzip import Compressor
exact, compressors = [], {}
for model, archive, original, geometries in json.loads(sys.argv[2]):
    compressor = compressors.get(model) or compressors.setdefault(model, Compressor(model))
    archive, original = open(archive, "rb").read(), open(original, "rb").read()
    exact.append([])
    for threads, batch in geometries:
        compressor.threads, compressor.batch_size = threads, batch
        exact[-1].append(compressor.decompress(archive) == original)
torch.set_num_threads(int(sys.argv[3]))
print(json.dumps({"exact": exact, "learning": learning_digest()}))
"""


def golden(name: str, text: bytes, model: str, settings: dict) -> Path:
    """A committed golden archive; made now (in this process) only if missing and asked for."""
    path = GOLDEN / f"alice1200-{name}.lz" if name != "gemma3" else GOLDEN / "alice600-gemma3.lz"
    if os.environ.get("LLMZIP_WRITE_GOLDEN") and not path.exists():
        path.write_bytes(Compressor(model, **settings).compress(text))
    return path


@pytest.fixture(scope="module")
def archives(tiny_dir, tiny_gemma3_dir, tmp_path_factory) -> dict[str, tuple[str, Path, bytes]]:
    """Every archive to decode: name -> (model, archive, original). Fresh ones are coded here by
    the teacher-forced encoder; the decoders run in the environments' processes."""
    folder = tmp_path_factory.mktemp("archives")
    found = {}
    for name, model in (("tiny", tiny_dir), ("tiny-gemma3", tiny_gemma3_dir)):
        for kind, (text, settings) in TINY_ARCHIVES.items():
            found[f"{name}-golden{kind}"] = model, golden(f"{name}{kind}", text, model, settings), text
            fresh = folder / f"{name}-fresh{kind}.lz"
            fresh.write_bytes(Compressor(model, **settings).compress(text))
            found[f"{name}-fresh{kind}"] = model, fresh, text
        for kind, text in LEGACY_ARCHIVES.items():
            found[f"{name}-golden{kind}"] = model, GOLDEN / f"alice1200-{name}{kind}.lz", text
    for kind, (text, settings) in SMOLLM2_ARCHIVES.items():
        found[f"smollm2-golden{kind}"] = "smollm2-135m", golden(f"smollm2{kind}", text, "smollm2-135m", settings), text
    text, settings = GEMMA3_ARCHIVE
    found["gemma3-golden"] = "gemma3-270m", golden("gemma3", text, "gemma3-270m", settings), text
    for name, (_, path, _) in found.items():
        header, _ = container.unpack(path.read_bytes())
        assert not header.machine_bound and not any(c.raw for c in header.chunks), name  # every chunk really decoded
    return found


def cell_decodes(name: str, environment: str) -> bool:
    """Whether `environment` decodes archive `name`: the tiny models' plain golden archives
    everywhere, all their golden ones on the reference path, and all their archives in
    FLOAT_CHANGERS; one SmolLM2 archive in turn (each in two environments at least); gemma3-270m's
    in GEMMA3_ENVIRONMENT."""
    if name.startswith("smollm2"):
        kinds = [f"smollm2-golden{kind}" for kind in SMOLLM2_ARCHIVES]
        turns = [e for e in ENVIRONMENTS if e != REFERENCE_PATH]
        return environment in turns and name == kinds[turns.index(environment) % len(kinds)]
    if name.startswith("gemma3"):
        return environment == GEMMA3_ENVIRONMENT
    golden = "-golden" in name
    return name.endswith("-golden") or environment in FLOAT_CHANGERS or (golden and environment == REFERENCE_PATH)


@pytest.fixture(scope="module")
def reference_steps() -> str:
    return learning_digest()


@pytest.mark.real_model
@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_every_archive_decodes_and_learning_steps_agree_in_every_environment(
    archives, reference_steps, environment, tmp_path
):
    if environment.endswith("avx512") and CPU != "AVX512":
        pytest.skip(f"this CPU runs {CPU} kernels, not AVX-512")
    geometry = GEOMETRIES[list(ENVIRONMENTS).index(environment) % len(GEOMETRIES)]
    names = [name for name in archives if cell_decodes(name, environment)]
    jobs = []
    for name in names:
        model, path, text = archives[name]
        original = tmp_path / f"{name}.original"
        original.write_bytes(text)
        jobs.append((model, str(path), str(original), [geometry]))
    command = [sys.executable, "-c", WORKER, str(Path(__file__).parent), json.dumps(jobs), str(geometry[0])]
    done = subprocess.run(command, env=os.environ | ENVIRONMENTS[environment], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    failed = [name for name, (exact,) in zip(names, seen["exact"], strict=True) if not exact]
    assert not failed, f"not decoded exactly at (threads, batch) {geometry}: {failed}"
    assert seen["learning"] == reference_steps, "learning took other steps here"
