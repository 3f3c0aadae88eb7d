"""Model loading: built-in aliases (`aliases.py`), Hugging Face ids, local directories and
`.gguf` files, each with a fingerprint that archives record."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import safetensors.torch
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .aliases import ALIASES, DEFAULT_MODEL, Alias, cache_dir, fetch
from .errors import ModelLoadError
from .exact.architectures import ExactModel, exact_architecture
from .tokenization import ByteTokenizer

FINGERPRINT_BYTES = 8


@dataclass
class LoadedModel:
    """A causal LM with its byte-exact tokenizer, under the name archives record."""

    name: str
    model: PreTrainedModel
    tokenizer: ByteTokenizer

    @classmethod
    def from_hf(cls, name: str, model: PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerBase) -> LoadedModel:
        model.eval()
        vocab = model.get_output_embeddings().weight.shape[0]
        return cls(name, model, ByteTokenizer(tokenizer, vocab))

    @cached_property
    def fingerprint(self) -> bytes:
        """Hash of the weights the predictor computes with and of the id -> bytes table."""
        digest = hashlib.sha256()
        for name, param in sorted(self.model.named_parameters()):
            digest.update(f"{name}:{param.dtype}:{tuple(param.shape)}".encode())
            digest.update(param.detach().contiguous().view(-1).view(torch.uint8).numpy())
        for piece in self.tokenizer.id_bytes:
            digest.update(len(piece).to_bytes(4, "little") + piece)
        return digest.digest()[:FINGERPRINT_BYTES]


def exact_model(loaded: LoadedModel, device: torch.device) -> ExactModel:
    """The exact model prepared from `loaded`: for a built-in alias, from the cache when a copy
    is there and its digest checks out (a second), else prepared (seconds) and cached."""
    architecture = exact_architecture(loaded.model)
    config = architecture.config_of(loaded.model)
    path = cache_dir() / "prepared" / f"{architecture.NAME}-{loaded.fingerprint.hex()}.pt"
    if loaded.name in ALIASES and path.exists():
        with contextlib.suppress(Exception):  # unreadable or damaged: prepare it again
            saved = torch.load(path, weights_only=True)
            if saved["digest"] == _digest(saved["state"]):
                return architecture.from_state(config, saved["state"]).to(device)
    model = architecture.prepare(loaded.model, config)
    if loaded.name in ALIASES:
        with contextlib.suppress(OSError):  # no space or no permission: preparing again next time works
            path.parent.mkdir(parents=True, exist_ok=True)
            state = model.state()
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save({"digest": _digest(state), "state": state}, tmp)
            os.replace(tmp, path)
    return model.to(device)


def _digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


def load_model(spec: str = DEFAULT_MODEL, quiet: bool = True) -> LoadedModel:
    """Load an alias, a `.gguf` file, a local directory or a Hugging Face model id."""
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        if spec in ALIASES:
            return _load_alias(ALIASES[spec], quiet)
        if spec.endswith(".gguf") and Path(spec).is_file():
            return _load(spec, str(Path(spec).parent), gguf_file=Path(spec).name)
        return _load(spec, spec)
    except ModelLoadError:
        raise
    except Exception as e:  # transformers/hub raise many types; the user needs one line
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(f"cannot load model {spec!r}: {first_line}") from e


def _load_alias(alias: Alias, quiet: bool) -> LoadedModel:
    """Load from the converted copy in the cache (seconds), else from the GGUF file (~20 s for
    SmolLM2, mostly parsing GGUF metadata) and keep a converted copy if it loads identically."""
    converted = cache_dir() / "converted" / f"{alias.name}-{alias.sha256[:16]}"
    if (converted / "config.json").exists():
        return _load(alias.name, str(converted))
    path = fetch(alias, quiet)
    loaded = _load(alias.name, str(path.parent), gguf_file=path.name)
    converted.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=converted.parent)
    try:
        _save_dequantized(loaded, Path(tmp))
        if _load(alias.name, tmp).fingerprint == loaded.fingerprint:
            os.replace(tmp, converted)
    except OSError:
        pass  # no space, or another process converted it first: loading from GGUF still works
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return loaded


def _save_dequantized(loaded: LoadedModel, folder: Path) -> None:
    """Save a GGUF-loaded model as a plain float32 checkpoint (transformers' save_pretrained
    refuses GGUF-quantized models, although their weights are already dequantized)."""
    loaded.model.config.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    safetensors.torch.save_model(loaded.model, str(folder / "model.safetensors"))  # handles tied weights
    loaded.tokenizer.tokenizer.save_pretrained(folder)


def _load(name: str, source: str, gguf_file: str | None = None) -> LoadedModel:
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    # transformers' GGUF reader draws its own progress bar, which no setting turns off
    with contextlib.redirect_stderr(io.StringIO()):
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    return LoadedModel.from_hf(name, model, tokenizer)
