"""Archives open on any machine: an exact archive decodes bit-exactly in another process under
other CPU kernels (torch's ATEN_CPU_CAPABILITY, oneDNN's DNNL_MAX_CPU_ISA, MKL's
MKL_ENABLE_INSTRUCTIONS), thread counts and batch sizes, whether it was made just now
(teacher-forced) or once, on some other machine (the golden archives under tests/golden).

Set LLMZIP_WRITE_GOLDEN=1 to make the golden archives again (only when the format or the exact
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

from llmzip import container

GOLDEN = Path(__file__).parent / "golden"
TEXTS = {  # the tiny model codes only its few merged words below 8 bits a byte
    "smollm2-135m": (GOLDEN / "alice1200.txt").read_bytes(),
    "tiny": ("the rain and the sun in Привет мир, " * 12).encode(),
}
CPU = torch.backends.cpu.get_cpu_capability()  # the best kernel level this CPU runs (forcing more: SIGILL)
ENVIRONMENTS = {
    "as installed": {},
    "ATEN_CPU_CAPABILITY=default": {"ATEN_CPU_CAPABILITY": "default"},
    "ATEN_CPU_CAPABILITY=avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "ATEN_CPU_CAPABILITY=avx512": {"ATEN_CPU_CAPABILITY": "avx512"},
    "DNNL_MAX_CPU_ISA=SSE41": {"DNNL_MAX_CPU_ISA": "SSE41"},
    "DNNL_MAX_CPU_ISA=AVX2": {"DNNL_MAX_CPU_ISA": "AVX2"},
    "MKL_ENABLE_INSTRUCTIONS=SSE4_2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}
GEOMETRIES = [(threads, batch) for threads in (1, 2) for batch in (1, 7, 64)]  # (threads, batch size)
# Decodes each archive at each of its geometries in one process and prints what it saw.
WORKER = """
import json, sys, torch
from llmzip import Compressor
model, jobs = sys.argv[1], json.loads(sys.argv[2])
compressor = Compressor(model)
exact = []
for archive, original, geometries in jobs:
    archive, original = open(archive, "rb").read(), open(original, "rb").read()
    exact.append([])
    for threads, batch in geometries:
        compressor.threads, compressor.batch_size = threads, batch
        exact[-1].append(compressor.decompress(archive) == original)
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "exact": exact}))
"""


def decode_everywhere(archives: dict[str, tuple[Path, bytes]], model: str, environment: str, geometries: list) -> None:
    """Decode each archive (name: path, original text) at each (threads, batch size), in one
    process under `environment` (a process per archive would spend most of the time starting)."""
    if environment.endswith("avx512") and CPU != "AVX512":
        pytest.skip(f"this CPU runs {CPU} kernels, not AVX-512")
    jobs = []
    for name, (archive, text) in archives.items():
        header, _ = container.unpack(archive.read_bytes())
        assert not header.machine_bound and not any(c.raw for c in header.chunks), name  # every chunk really decoded
        source = archive.with_suffix(".original")
        source.write_bytes(text)
        jobs.append((str(archive), str(source), geometries))
    env = os.environ | ENVIRONMENTS[environment]
    command = [sys.executable, "-c", WORKER, model, json.dumps(jobs)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    results = zip(archives, seen["exact"], strict=True)
    failed = [(name, g) for name, exact in results for g, e in zip(geometries, exact, strict=True) if not e]
    assert not failed, f"not decoded exactly (archive, (threads, batch)): {failed}"


def compress(model: str, text: bytes, out: Path, *flags: str) -> None:
    source = out.with_suffix(".source")
    source.write_bytes(text)
    command = [sys.executable, "-m", "llmzip", "compress", str(source), "-o", str(out), "-f", "-q", "--model", model]
    subprocess.run([*command, *flags], check=True)
    source.unlink()


# Short chunks; chunks of 600 tokens with a window of 8, longer than the KV cache holds
# (sinks + window + kvcache.SLACK), so that the decoder's cache slides; and side models over
# batches of 2 chunks, whose adaptive map carries from batch to batch.
TINY_ARCHIVES = {
    "": (TEXTS["tiny"], ("--chunk-size", "24", "--steer", "random:2", "-1")),
    "-window": (TEXTS["tiny"] * 3, ("--chunk-size", "600", "--window", "8", "--steer", "random:2")),
    "-side": (TEXTS["tiny"] * 3, ("--chunk-size", "300", "--window", "8", "--batch-size", "2", "--steer", "random:2")),
    # both, made after the Llama's forward 4 and the Gemma's forward 3 (sinks pinned before the
    # window): the "-window" and "-side" goldens keep the Llama's forward 3 and the Gemma's 2 decoded
    "-pinned": (
        TEXTS["tiny"] * 3,
        ("--chunk-size", "600", "--window", "8", "--batch-size", "2", "--steer", "random:2"),
    ),
}
# The same, as llmzip wrote them before side models version 4 (no token n-grams) and, for the
# Llama, before its forward 3 (10-bit keys): golden only.
LEGACY_ARCHIVES = {"-side-v3": TINY_ARCHIVES["-side"][0]}


@pytest.fixture(scope="module", params=["tiny", "tiny-gemma3"])
def tiny_archives(request, tmp_path_factory):
    """A tiny model of each exact architecture (saved as a directory), its golden archives and
    ones made now by another process (with teacher forcing)."""
    model = request.getfixturevalue({"tiny": "tiny_dir", "tiny-gemma3": "tiny_gemma3_dir"}[request.param])
    folder = tmp_path_factory.mktemp("tiny-archives")
    archives = {"model": model}
    for kind, (text, flags) in TINY_ARCHIVES.items():
        golden = GOLDEN / f"alice1200-{request.param}{kind}.lz"
        if os.environ.get("LLMZIP_WRITE_GOLDEN") and (not kind or not golden.exists()):
            compress(model, text, golden, *flags)
        archives[f"golden{kind}"], archives[f"fresh{kind}"] = golden, folder / f"fresh{kind}.lz"
        compress(model, text, archives[f"fresh{kind}"], *flags)
    for kind in LEGACY_ARCHIVES:
        archives[f"golden{kind}"] = GOLDEN / f"alice1200-{request.param}{kind}.lz"
    return archives


# Windowed archives and side models decode under the two settings that change the float kernels most.
FLOAT_CHANGERS = ("as installed", "ATEN_CPU_CAPABILITY=default", "DNNL_MAX_CPU_ISA=SSE41")


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_tiny_models_decode_in_every_environment(tiny_archives, tmp_path, environment):
    names = ["golden", "fresh"]
    names += (
        ["golden-window", "golden-side", "golden-side-v3", "golden-pinned"] if environment in FLOAT_CHANGERS else []
    )
    names += ["fresh-window", "fresh-side", "fresh-pinned"] if environment == "as installed" else []
    texts = {kind: text for kind, (text, _) in TINY_ARCHIVES.items()} | LEGACY_ARCHIVES
    archives = {}
    for name in names:
        copy = tmp_path / f"{name}.lz"
        copy.write_bytes(tiny_archives[name].read_bytes())
        archives[name] = copy, texts[name.removeprefix("golden").removeprefix("fresh")]
    decode_everywhere(archives, tiny_archives["model"], environment, GEOMETRIES)


# Short chunks (made on an Intel Xeon), and the default level's side models over the text twice
# in chunks of 300 tokens with a window of 8, so that the cache slides (made on an AMD EPYC), by
# forward 3 and again by forward 4 (sinks pinned before the window; made on an AMD EPYC Zen 4).
SMOLLM2_ARCHIVES = {
    "": (TEXTS["smollm2-135m"], ("--chunk-size", "128")),
    "-window": (TEXTS["smollm2-135m"] * 2, ("--chunk-size", "300", "--window", "8")),
    "-pinned": (TEXTS["smollm2-135m"] * 2, ("--chunk-size", "300", "--window", "8")),
}


@pytest.mark.real_model
@pytest.mark.parametrize(
    ("environment", "geometry"),
    # One geometry per environment (a real model takes ~20 s to load and prepare in each process);
    # together they cover every thread count and batch size.
    [(env, GEOMETRIES[(k * 4) % len(GEOMETRIES)]) for k, env in enumerate(ENVIRONMENTS)],
)
def test_smollm2_golden_archives_decode_in_every_environment(tmp_path, environment, geometry):
    archives = {}
    for kind, (text, flags) in SMOLLM2_ARCHIVES.items():
        golden = GOLDEN / f"alice1200-smollm2{kind}.lz"
        if os.environ.get("LLMZIP_WRITE_GOLDEN") and not golden.exists():
            compress("smollm2-135m", text, golden, *flags)
        copy = tmp_path / f"archive{kind}.lz"
        copy.write_bytes(golden.read_bytes())
        archives[f"smollm2{kind}"] = copy, text
    decode_everywhere(archives, "smollm2-135m", environment, [geometry])


@pytest.mark.real_model
@pytest.mark.parametrize(
    ("environment", "geometry"),
    [("ATEN_CPU_CAPABILITY=default", (1, 1)), ("DNNL_MAX_CPU_ISA=SSE41", (2, 7))],
)
def test_gemma3_golden_archive_decodes_in_other_environments(tmp_path, environment, geometry):
    """gemma3-270m (sliding-window layers, 262 144-token vocabulary): a teacher-forced golden
    archive decoded by KV steps under other kernels, threads and batch sizes."""
    golden = GOLDEN / "alice600-gemma3.lz"
    text = TEXTS["smollm2-135m"][:600]
    if os.environ.get("LLMZIP_WRITE_GOLDEN") and not golden.exists():
        compress("gemma3-270m", text, golden, "--chunk-size", "64")
    copy = tmp_path / "archive.lz"
    copy.write_bytes(golden.read_bytes())
    decode_everywhere({"gemma3": (copy, text)}, "gemma3-270m", environment, [geometry])
