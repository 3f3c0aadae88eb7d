"""Model loading: built-in aliases (`aliases.py`), Hugging Face ids, local directories and
`.gguf` files, each with a fingerprint that archives record.

What coding needs of a model is small: its tokenizer, its fingerprint, which exact architecture
computes it and a few sizes (`ModelFacts`). A built-in model, once converted, keeps these beside
its checkpoint (a manifest), so that coding with its prepared exact weights starts without
importing transformers or reading the float checkpoint; the Hugging Face model is loaded only
where it is used (float forwards, preparing, learning, steering training)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import notices
from .aliases import ALIASES, DEFAULT_MODEL, Alias, cache_dir, fetch
from .errors import ModelLoadError
from .exact.architectures import EXACT_ARCHITECTURES, ExactModel, exact_architecture
from .exact.prepared import DecoderConfig
from .tokenization import ByteTokenizer, TokenRoles

if TYPE_CHECKING:
    import transformers
    from transformers import PreTrainedModel

FINGERPRINT_BYTES = 8
# A converted built-in model's manifest: its facts, fingerprint and token table (llmzip-CODE.json)
# and its tokenizer as transformers runs it (llmzip-CODE-tokenizer.json), named by a digest of the
# code whose output they hold, so that llmzip versions sharing a cache keep one each.
MANIFEST_SOURCES = ("models.py", "tokenization.py", "exact/prepared.py", "exact/llama.py", "exact/gemma3.py")
PREPARED_FORMAT = 2  # of the prepared weights' file (2: checked by CRC32); in its name, as the manifest's code


@dataclass(frozen=True)
class ModelFacts:
    """What coding needs to know of a model besides its weights and tokenizer."""

    model_type: str
    exact: DecoderConfig | None  # the exact architecture's sizes (LlamaConfig, Gemma3Config); None: none computes it
    context: int | None  # positions the model takes, where it says
    width: int  # the input embeddings' width (steering vectors)

    @classmethod
    def of(cls, model: PreTrainedModel) -> ModelFacts:
        architecture = exact_architecture(model)
        return cls(
            model_type=model.config.model_type,
            exact=None if architecture is None else architecture.Config.of(model),
            context=getattr(model.config, "max_position_embeddings", None),
            width=model.get_input_embeddings().weight.shape[1],
        )

    @property
    def architecture(self) -> type[ExactModel] | None:
        return next((a for a in EXACT_ARCHITECTURES if type(self.exact) is a.Config), None)

    def to_json(self) -> dict[str, Any]:
        architecture = self.architecture
        exact = None if architecture is None else {"architecture": architecture.ARCHITECTURE, **asdict(self.exact)}
        return {"model_type": self.model_type, "exact": exact, "context": self.context, "width": self.width}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelFacts:
        exact = data["exact"]
        if exact is not None:
            name = exact.pop("architecture")
            config = next(a.Config for a in EXACT_ARCHITECTURES if name == a.ARCHITECTURE)
            exact = config(**{k: tuple(v) if isinstance(v, list) else v for k, v in exact.items()})
        return cls(data["model_type"], exact, data["context"], data["width"])


class LoadedModel:
    """A causal LM with its byte-exact tokenizer, under the name archives record. Its Hugging Face
    model (`model`) is loaded on first use where `load` is given instead."""

    def __init__(
        self,
        name: str,
        tokenizer: ByteTokenizer,
        facts: ModelFacts,
        *,
        model: PreTrainedModel | None = None,
        load: Callable[[], PreTrainedModel] | None = None,
        fingerprint: bytes | None = None,
    ) -> None:
        self.name, self.tokenizer, self.facts = name, tokenizer, facts
        self.exact_models: dict[torch.device, ExactModel] = {}  # exact_model's, per device
        if model is not None:
            self.model = model
        self._load = load
        if fingerprint is not None:
            self.fingerprint = fingerprint

    @classmethod
    def from_hf(cls, name: str, model: PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerBase) -> LoadedModel:
        model.eval()
        vocab = model.get_output_embeddings().weight.shape[0]
        return cls(name, ByteTokenizer.of(tokenizer, vocab), ModelFacts.of(model), model=model)

    @cached_property
    def model(self) -> PreTrainedModel:
        """The Hugging Face model (loaded now if it was not)."""
        assert self._load is not None
        return self._load()

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

    @property
    def architecture(self) -> type[ExactModel] | None:
        """The exact architecture computing this model, if llmzip has one."""
        return self.facts.architecture


def exact_model(loaded: LoadedModel, device: torch.device) -> ExactModel:
    """The exact model prepared from `loaded`, once per device (kept on `loaded`: a probe of
    `--model auto` and the coder share it; nothing changes it, learning works on a copy)."""
    if device not in loaded.exact_models:
        loaded.exact_models[device] = _prepare(loaded, device)
    return loaded.exact_models[device]


def _prepare(loaded: LoadedModel, device: torch.device) -> ExactModel:
    """For a built-in alias, from the cache when a copy is there and its CRC checks out
    (memory-mapped: a second), else prepared (seconds) and cached."""
    architecture, config = loaded.architecture, loaded.facts.exact
    assert architecture is not None and config is not None
    path = cache_dir() / "prepared" / f"{architecture.NAME}-{loaded.fingerprint.hex()}-v{PREPARED_FORMAT}.pt"
    if loaded.name in ALIASES and path.exists():
        with contextlib.suppress(Exception):  # unreadable or damaged: prepare it again
            saved = torch.load(path, weights_only=True, mmap=True)
            if saved["crc32"] == _crc32(saved["state"]):
                return architecture.from_state(config, saved["state"]).to(device)
    if loaded.name in ALIASES:
        notices.say(f"preparing the exact weights of {loaded.name} into {path.parent} (once; seconds)")
    model = architecture.prepare(loaded.model, config)
    if loaded.name in ALIASES:
        with contextlib.suppress(OSError):  # no space or no permission: preparing again next time works
            path.parent.mkdir(parents=True, exist_ok=True)
            state = model.state()
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save({"crc32": _crc32(state), "state": state}, tmp)
            os.replace(tmp, path)
    return model.to(device)


def _crc32(state: dict[str, torch.Tensor]) -> int:
    """A check of the saved numbers against damage (CRC32: 1.5x the speed of SHA-256 here)."""
    crc = 0
    for name in sorted(state):
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(state[name].contiguous().view(torch.uint8).numpy(), crc)
    return crc


def load_model(spec: str = DEFAULT_MODEL) -> LoadedModel:
    """Load an alias, a `.gguf` file, a local directory or a Hugging Face model id."""
    try:
        if spec in ALIASES:
            return _load_alias(ALIASES[spec])
        if spec.endswith(".gguf") and Path(spec).is_file():
            return _load(spec, str(Path(spec).parent), gguf_file=Path(spec).name)
        return _load(spec, spec)
    except ModelLoadError:
        raise
    except Exception as e:  # transformers/hub raise many types; the user needs one line
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(f"cannot load model {spec!r}: {first_line}") from e


def _load_alias(alias: Alias) -> LoadedModel:
    """Load from the manifest of the converted copy in the cache (a fraction of a second), else
    from the converted copy (seconds), else from the GGUF file (~20 s for SmolLM2, mostly
    parsing GGUF metadata), keeping a converted copy if it loads identically, and its manifest."""
    converted = cache_dir() / "converted" / f"{alias.name}-{alias.sha256[:16]}"
    if (loaded := _from_manifest(alias.name, converted)) is not None:
        return loaded
    if (converted / "config.json").exists():
        loaded = _load(alias.name, str(converted))
        _write_manifest(loaded, converted)
        return loaded
    path = fetch(alias)
    notices.say(f"converting {path.name} into a checkpoint in {converted.parent} (once; under a minute)")
    loaded = _load(alias.name, str(path.parent), gguf_file=path.name)
    converted.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=converted.parent)
    try:
        _save_dequantized(loaded, Path(tmp))
        again = _load(alias.name, tmp)
        if again.fingerprint == loaded.fingerprint:
            _write_manifest(again, Path(tmp))  # its tokenizer as later loads run it
            os.replace(tmp, converted)
    except OSError:
        pass  # no space, or another process converted it first: loading from GGUF still works
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return loaded


def _manifest(folder: Path) -> tuple[Path, Path]:
    """The manifest and tokenizer files that this llmzip's code writes and reads in `folder`."""
    digest = hashlib.sha256()
    for name in MANIFEST_SOURCES:
        digest.update((Path(__file__).parent / name).read_bytes())
    code = digest.hexdigest()[:16]
    return folder / f"llmzip-{code}.json", folder / f"llmzip-{code}-tokenizer.json"


def _write_manifest(loaded: LoadedModel, folder: Path) -> None:
    table = loaded.tokenizer.id_bytes
    manifest_file, tokenizer_file = _manifest(folder)
    manifest = {
        "fingerprint": loaded.fingerprint.hex(),
        "facts": loaded.facts.to_json(),
        "roles": asdict(loaded.tokenizer.roles),
        "id_lengths": [len(piece) for piece in table],
        "id_bytes": base64.b64encode(b"".join(table)).decode(),
    }
    with contextlib.suppress(OSError):  # without one, the model still loads, from its checkpoint
        tokenizer_file.write_text(loaded.tokenizer.tokenizer.backend_tokenizer.to_str())
        tmp = manifest_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(manifest))
        os.replace(tmp, manifest_file)


def _from_manifest(name: str, folder: Path) -> LoadedModel | None:
    """The model this llmzip's manifest in `folder` describes, its Hugging Face model loaded on
    first use; None where there is none."""
    manifest_file, tokenizer_file = _manifest(folder)
    try:
        manifest = json.loads(manifest_file.read_text())
        pieces, table, pos = base64.b64decode(manifest["id_bytes"]), [], 0
        for length in manifest["id_lengths"]:
            table.append(pieces[pos : pos + length])
            pos += length
        tokenizer = ByteTokenizer.load(tokenizer_file, table, TokenRoles(**manifest["roles"]))
        facts = ModelFacts.from_json(manifest["facts"])
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None
    fingerprint = bytes.fromhex(manifest["fingerprint"])
    return LoadedModel(name, tokenizer, facts, load=lambda: _load(name, str(folder)).model, fingerprint=fingerprint)


def _save_dequantized(loaded: LoadedModel, folder: Path) -> None:
    """Save a GGUF-loaded model as a plain float32 checkpoint (transformers' save_pretrained
    refuses GGUF-quantized models, although their weights are already dequantized)."""
    import safetensors.torch

    loaded.model.config.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    safetensors.torch.save_model(loaded.model, str(folder / "model.safetensors"))  # handles tied weights
    loaded.tokenizer.tokenizer.save_pretrained(folder)


def _load(name: str, source: str, gguf_file: str | None = None) -> LoadedModel:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    # transformers' GGUF reader draws its own progress bar, which no setting turns off
    with contextlib.redirect_stderr(io.StringIO()):
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    return LoadedModel.from_hf(name, model, tokenizer)
