"""The language model as a next-token predictor, stepped one token at a time over a batch of rows.

Encoder and decoder both call `step` with the same rows in the same order, so they see the
same floats. Teacher forcing is not used for encoding: on torch CPU it gives different floats
from KV-cache steps, and the decoder can only run KV-cache steps.

Llama-family models run through `llama.LlamaStep` (plain torch, several times faster); any
other causal LM runs through its Hugging Face forward (`HFStep`).
"""

from __future__ import annotations

import copy
import os
import warnings

import numpy as np
import torch
import transformers
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer

from .errors import LlmzipError
from .llama import PRECISIONS, LlamaConfig, LlamaStep

# With 1 or 2-3 rows torch picks other kernels, whose row results depend on the batch size and
# thread count; from 4 rows on each row's result is independent of the others (shared/FACTS.md).
MIN_ROWS = 4
Prefix = np.ndarray | torch.Tensor  # a steering prefix: token ids (int64 [N]) or input embeddings (float32 [N, hidden])


def default_precision() -> str:
    """bf16 where oneDNN has native bfloat16 kernels (AVX512-BF16 or AMX), else fp32. On enwik5,
    bf16 archives are within 0.05% of fp32's size and coded 1.5-1.9x faster (README)."""
    return "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def step_name(model: PreTrainedModel) -> str:
    """Which forward implementation computes `model`: archives record it, since the two give different floats."""
    return LlamaStep.NAME if LlamaConfig.of(model) else f"transformers-{transformers.__version__}"


class PreallocatedLayer(DynamicLayer):
    """A DynamicLayer that writes into buffers sized for the whole chunk. DynamicLayer grows by
    concatenation, copying the whole cache every step; this gives the same floats (the attention
    sees the same values) and takes 29% less time over 1024 steps of SmolLM2 with 16 rows."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        rows, heads, _, _ = key_states.shape
        self.key_buffer = key_states.new_empty(rows, heads, self.capacity, key_states.shape[-1])
        self.value_buffer = value_states.new_empty(rows, heads, self.capacity, value_states.shape[-1])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values


class HFStep:
    """Any causal LM through its Hugging Face forward, with a preallocated cache for models whose
    layers all attend to the full context (sliding-window models keep the stock cache)."""

    def __init__(self, model: PreTrainedModel, precision: str) -> None:
        if precision == "int8":
            with warnings.catch_warnings():  # torch.ao.quantization is deprecated; still the int8 path torch ships
                warnings.simplefilter("ignore", DeprecationWarning)
                quantize = torch.ao.quantization.quantize_dynamic
                self.model = quantize(copy.deepcopy(model), {torch.nn.Linear}, torch.qint8)
        else:
            dtype = PRECISIONS[precision]
            self.model = model if model.dtype == dtype else copy.deepcopy(model).to(dtype)
        config = model.config
        layer_types = getattr(config, "layer_types", None) or ["full_attention"]
        self.preallocate = getattr(config, "sliding_window", None) is None and set(layer_types) == {"full_attention"}
        self.cache: Cache | None = None

    def reset(self, steps: int) -> None:
        if self.preallocate:
            self.cache = Cache(layers=[PreallocatedLayer(steps) for _ in range(self.model.config.num_hidden_layers)])
        else:
            self.cache = DynamicCache()

    @torch.inference_mode()
    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """As LlamaStep: token ids [rows], or input embeddings [rows, hidden]."""
        if inputs.is_floating_point():
            feed = {"inputs_embeds": inputs.to(self.model.dtype)[:, None]}
        else:
            feed = {"input_ids": inputs.view(-1, 1)}
        out = self.model(**feed, past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1, :].float()


def state_bytes(model: PreTrainedModel, rows: int, positions: int, alphabet_size: int, precision: str) -> int:
    """Memory the predictor's state takes: every row's KV cache over `positions`, and its probabilities."""
    c = model.config
    heads = getattr(c, "num_attention_heads", 0) or 1
    head_dim = getattr(c, "head_dim", None) or getattr(c, "hidden_size", 0) // heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    per_position = 2 * getattr(c, "num_hidden_layers", 0) * kv_heads * head_dim * PRECISIONS[precision].itemsize
    return rows * (positions * per_position + 4 * alphabet_size)


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class Predictor:
    """Holds the model state for `rows` sequences advanced in lockstep."""

    def __init__(
        self,
        model: PreTrainedModel,
        rows: int,
        alphabet_size: int,
        precision: str = "fp32",
        prefix: Prefix | None = None,
    ) -> None:
        if rows < MIN_ROWS:
            raise ValueError(f"rows must be at least {MIN_ROWS}")
        self.model, self.rows, self.precision = model, rows, precision
        self.prefix = [] if prefix is None else list(prefix)  # ids or vectors, fed to every row in turn
        self.vocab = model.get_output_embeddings().weight.shape[0]
        config = LlamaConfig.of(model)
        self.forward = LlamaStep(model, config, rows, precision) if config else HFStep(model, precision)
        # Escape symbols beyond the vocabulary get probability 0 here; the coder lifts every
        # symbol to its smallest representable probability.
        self.probs = np.zeros((rows, alphabet_size), dtype=np.float32)

    def reset(self, steps: int) -> None:
        """Start new sequences, to be advanced at most `steps` tokens after the steering prefix.
        The prefix is fed to all rows at once, so its cache is computed once per batch."""
        positions = len(self.prefix) + steps
        need = state_bytes(self.model, self.rows, positions, self.probs.shape[1], self.precision)
        if need > physical_memory():  # refuse before allocating, whatever the header asked for
            raise LlmzipError(
                f"{self.rows} rows x {positions} positions need {need / 2**30:.1f} GiB of KV cache, more than "
                f"this machine's {physical_memory() / 2**30:.1f} GiB; use fewer rows (--batch-size) or shorter chunks"
            )
        self.forward.reset(positions)
        for item in self.prefix:
            item = torch.as_tensor(item)
            self.forward(item.expand(self.rows, *item.shape).contiguous())

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed one token per row; return each row's next-token probabilities over the alphabet."""
        logits = self.forward(torch.from_numpy(input_ids.astype(np.int64)))
        self.probs[:, : self.vocab] = torch.softmax(logits, dim=-1).numpy()
        return self.probs
