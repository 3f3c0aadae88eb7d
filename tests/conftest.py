"""Tiny randomly initialised models built in code (fixed seed, no download)."""

from __future__ import annotations

import llmzip

llmzip.tune_process()  # as the command line runs, before torch is imported

from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from llmzip import Compressor, LoadedModel
from llmzip.exact.architectures import ExactModel, exact_architecture
from llmzip.tokenization import byte_level_alphabet

MISSING_BYTES = (0x04, 0x1D, 0xFF)  # like SmolLM2, whose vocabulary lacks some single bytes
WORDS = ["the", "and", "ing", "er", "in", "on", "at", "Привет", "мир"]


def _merges(pieces: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Tokens and BPE merges that build each piece left to right."""
    tokens, merges = [], []
    for piece in pieces:
        for k in range(2, len(piece) + 1):
            if piece[:k] not in tokens:
                merges.append((piece[: k - 1], piece[k - 1]))
                tokens.append(piece[:k])
    return tokens, merges


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2 style byte-level BPE, missing some byte tokens."""
    alphabet = {b: c for c, b in byte_level_alphabet().items()}
    as_chars = ["".join(alphabet[b] for b in w.encode()) for w in WORDS + [" " + w for w in WORDS]]
    tokens, merges = _merges(as_chars)
    pieces = ["<|endoftext|>"] + [alphabet[b] for b in range(256) if b not in MISSING_BYTES] + tokens
    tok = Tokenizer(models.BPE({p: i for i, p in enumerate(pieces)}, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def byte_fallback_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece style (like Gemma): U+2581 for spaces, <0xXX> byte fallback."""
    tokens, merges = _merges([w.replace(" ", "\u2581") for w in WORDS + [" " + w for w in WORDS]])
    letters = sorted({c for w in WORDS for c in w} | {"\u2581"})
    pieces = ["<unk>", "<bos>"] + [f"<0x{b:02X}>" for b in range(256)] + letters + tokens
    tok = Tokenizer(models.BPE({p: i for i, p in enumerate(pieces)}, merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>")


TINY_SIZES = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}


def seeded(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every weight but the norms from numpy's frozen legacy integer stream: the same floats on
    every machine (torch's normal_ has vectorised variants per CPU), so golden archives of the
    tiny model decode anywhere."""
    rng = np.random.RandomState(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.copy_(torch.from_numpy(rng.randint(-1000, 1001, tuple(param.shape)) * 2.0**-14))
    return model


def tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, name: str = "tiny") -> LoadedModel:
    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, **TINY_SIZES)
    return LoadedModel.from_hf(name, seeded(LlamaForCausalLM(config), seed), tokenizer)


def tiny_gemma(tokenizer: PreTrainedTokenizerFast, name: str = "tiny-gemma", **options: float) -> LoadedModel:
    """A Gemma 3 with a sliding-window layer (window 16) and a full one."""
    layers = {"head_dim": 16, "sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"]}
    config = Gemma3TextConfig(vocab_size=len(tokenizer), **TINY_SIZES, **layers, **options)
    model = seeded(Gemma3ForCausalLM(config), 0)
    rng = np.random.RandomState(1)
    with torch.no_grad():  # norm gains 1 + w: w starts at 0, which would leave them untested
        for param_name, param in model.named_parameters():
            if "norm" in param_name:
                param.copy_(torch.from_numpy(rng.randint(-1000, 1001, tuple(param.shape)) * 2.0**-12))
    return LoadedModel.from_hf(name, model, tokenizer)


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    return tiny_model(byte_level_tokenizer())


@pytest.fixture(scope="session")
def tiny_fallback() -> LoadedModel:
    return tiny_model(byte_fallback_tokenizer(), name="tiny-fallback")


@pytest.fixture(scope="session")
def tiny_gemma3(tiny_fallback: LoadedModel) -> LoadedModel:
    return tiny_gemma(tiny_fallback.tokenizer.tokenizer)


@pytest.fixture(scope="session")
def tiny_hf(tiny_fallback: LoadedModel) -> LoadedModel:
    """An architecture without an exact forward (Gemma 3 with attention logit soft-capping, as
    Gemma 2 has): it runs through the Hugging Face float forward, machine-bound."""
    return tiny_gemma(tiny_fallback.tokenizer.tokenizer, "tiny-hf", attn_logit_softcapping=50.0)


def prepared(loaded: LoadedModel) -> ExactModel:
    """The model's exact forward, prepared as the compressor does."""
    architecture = exact_architecture(loaded.model)
    return architecture.prepare(loaded.model, architecture.Config.of(loaded.model))


@pytest.fixture(scope="session")
def exact_tiny(tiny: LoadedModel) -> ExactModel:
    return prepared(tiny)


@pytest.fixture(scope="session")
def compressor(tiny: LoadedModel) -> Compressor:
    """Small chunks and batches, so short inputs span several chunks and batches."""
    return Compressor(tiny, chunk_size=64, batch_size=4, threads=1)


def saved(loaded: LoadedModel, path: Path) -> str:
    """`loaded` saved as a local Hugging Face directory, for the CLI."""
    loaded.model.save_pretrained(path)
    loaded.tokenizer.tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_dir(tiny: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> str:
    return saved(tiny, tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tiny_gemma3: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> str:
    return saved(tiny_gemma3, tmp_path_factory.mktemp("tiny-gemma3-model"))
