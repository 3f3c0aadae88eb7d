"""The language model as a next-token predictor: token ids in, probabilities over the coder's
alphabet out (unnormalized, float64: the coder normalizes them, and in float32 its sum times
its scale can round past 2**24 and leave the last symbol no probability).

- `ExactPredictor` (Llama and Gemma 3 models, `exact/llama.py`, `exact/gemma3.py`): probabilities are a function of the
  weights and the token history alone. The encoder teacher-forces whole chunks, the decoder
  steps any number of chunks in lockstep, on any CPU or GPU, with any thread count.
- `FloatPredictor` (float_predictor.py: any other causal LM, through its Hugging Face forward):
  machine-bound archives.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from importlib.metadata import version
from typing import TYPE_CHECKING

import numpy as np
import torch

from .container import EXACT, FLOAT_PRECISIONS
from .errors import LlmzipError
from .exact import arithmetic, learning
from .exact.architectures import ExactModel, exact_architecture
from .exact.kvcache import SLACK, KVCache
from .exact.learning import Learner
from .exact.llama import Tape
from .levels import SINK_TOKENS

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# The Hugging Face forward's dtype per float precision (int8: torch's dynamic quantization).
DTYPES = dict(zip(FLOAT_PRECISIONS, (torch.float32, torch.bfloat16, torch.float32), strict=True))
FORCED_BLOCK = SLACK  # rows x positions per teacher-forced forward (188 tok/s on 2 AVX2 cores; 128: 154)
# Rows x positions a decoding step computes for about the time of one: csrc/linear.cpp's tile of
# compact weights, within which the weights' bytes set a step's time (SmolLM2, AMD Zen 3 AVX2:
# the linear layers take 7.1-7.8 ms for 1 to 5 rows, 12.2 for 8: the integer products then).
DRAFTED_ROWS = 5
Prefix = np.ndarray | torch.Tensor  # a steering prefix: token ids (int64 [N]) or input embeddings (float32 [N, hidden])


def default_precision(architecture: type[ExactModel] | None) -> str:
    """`exact` where llmzip implements the model's architecture; else the float forward, in bf16
    where oneDNN has native bfloat16 kernels (AVX512-BF16 or AMX), else fp32."""
    if architecture is not None:
        return EXACT
    bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "bf16" if bf16 else "fp32"


def forward_name(architecture: type[ExactModel] | None, precision: str) -> str:
    """Which implementation computes the probabilities: archives record it."""
    if precision == EXACT:
        assert architecture is not None
        return architecture.NAME
    return f"transformers-{version('transformers')}"


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(need: int, rows: int, positions: int) -> None:
    """Refuse before allocating, whatever a header asked for."""
    if need > physical_memory():
        raise LlmzipError(
            f"{rows} rows x {positions} positions need {need / 2**30:.1f} GiB of KV cache, more than "
            f"this machine's {physical_memory() / 2**30:.1f} GiB; use fewer rows (--batch-size) or shorter chunks"
        )


class ExactPredictor:
    """The exact model's probabilities, after a steering prefix that every sequence reads first.
    With a `window`, each token attends the `window` tokens before it and the first ones (the
    prefix and SINK_TOKENS more), so a sequence's attention and cache stay bounded however long
    it runs."""

    exact = True

    def __init__(
        self,
        model: ExactModel,
        alphabet_size: int,
        prefix: Prefix | None = None,
        window: int | None = None,
        forward: str | None = None,
        learner: Learner | None = None,
    ) -> None:
        """`forward`: which of the model's FORWARDS to compute (an archive's), its newest if None.
        `learner`: the weights learn after every learning.SEGMENT positions of the batch's sequences
        (learning.py), from the tokens their rows code; they start from the prepared ones at
        each `start`."""
        self.model, self.alphabet_size, self.window, self.learner = model, alphabet_size, window, learner
        self.forward = forward or model.NAME
        self.vocab = model.config.vocab
        self.prefix = None if prefix is None else self._embed(torch.as_tensor(prefix))
        self.cache: KVCache | None = None
        self.rows = self.position = 0
        self.weights = torch.zeros(0, alphabet_size, dtype=torch.float64)

    def _embed(self, items: torch.Tensor) -> torch.Tensor:
        """Token ids or vectors -> rotated input embeddings [N, hidden]."""
        if items.is_floating_point():
            return self.model.embed_vectors(items)
        return self.model.embed[items.to(self.model.device)]

    @property
    def prefix_length(self) -> int:
        return 0 if self.prefix is None else len(self.prefix)

    def start(self, rows: int, steps: int, lengths: np.ndarray | None = None) -> None:
        """Start `rows` new sequences of at most `steps` tokens after the prefix (each row's
        `lengths`: its tokens, where the weights learn: a row learns from its own). The prefix's
        cache is computed once and kept while the cache is reused."""
        positions = self.prefix_length + steps
        sinks = self.prefix_length + SINK_TOKENS if self.window else 0
        history = learning.SEGMENT if self.learner else 0  # a decoder's segment, forwarded again to learn
        slots = KVCache.slots(positions, self.window, sinks, history)
        if self.cache is None or self.cache.rows != rows or self.cache.positions < positions:
            key_levels = self.model.key_levels(self.model.config, self.forward)
            check_memory(rows * slots * KVCache.bytes_per_position(self.model.config, key_levels), rows, slots)
            self.cache = self.model.new_cache(rows, positions, self.window, sinks, self.forward, history)
            if self.prefix is not None:
                self.model.forward(self.prefix.expand(rows, -1, -1), 0, self.cache)
        self.cache.restart()
        self.rows, self.position = rows, self.prefix_length
        if self.learner:
            self.learner.reset()
            self.lengths = np.full(rows, steps) if lengths is None else np.asarray(lengths)
            self.segment: list[np.ndarray] = []  # the current segment's inputs, stepped

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed one token per row; return each row's next-token weights over the alphabet (an
        array reused by the next call)."""
        if self.learner and len(self.segment) == learning.SEGMENT:  # input_ids are the segment's last targets
            inputs = np.stack(self.segment, 1)
            start = self.position - learning.SEGMENT
            targets = np.concatenate([inputs[:, 1:], input_ids[:, None]], 1)
            tape = self.learner.tape()
            logits = self.model.forward(self._embed(torch.from_numpy(inputs)), start, self.cache, tape)
            self._learn(tape, logits, targets, start)
            self.segment = []
        if self.learner:
            self.segment.append(input_ids.copy())
        x = self.model.embed[torch.from_numpy(input_ids).to(self.model.device)][:, None]
        logits = self.model.forward(x, self.position, self.cache)[:, 0]
        self.position += 1
        return self._weights(logits)

    def drafts(self, rows: int) -> int:
        """Drafted tokens per row a step of `rows` rows scores besides its input (`score`) for
        about the cost of a plain step: within DRAFTED_ROWS rows x positions, and as many as
        attention reads from the integer cache in one pass (arithmetic.CACHED_QUERIES queries per
        key head); none where the weights learn, whose segments step a position at a time."""
        c = self.model.config
        most = min(DRAFTED_ROWS // rows, arithmetic.CACHED_QUERIES // (c.heads // c.kv_heads)) - 1
        return 0 if self.learner else max(0, most)

    def score(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed T tokens to each of the first k rows at the next T positions, [k, T] (an input,
        then drafted tokens; rows after k, whose sequences ended, are not computed), without
        moving on: each row's weights after each, [k, T, alphabet] (valid until the next call).
        `advance(n)` keeps the first n positions; the next call overwrites the rest."""
        assert not self.learner, "learning steps a position at a time"
        assert self.cache is not None
        rows, length = input_ids.shape
        self.cache.make_room(self.position, length)  # before taking rows: a view's slide would not reach the cache
        cache = self.cache if rows == self.rows else self.cache.first_rows(rows)
        x = self.model.embed[torch.from_numpy(input_ids).to(self.model.device)]
        logits = self.model.forward(x, self.position, cache)
        return self._weights(logits.flatten(0, 1)).reshape(rows, length, self.alphabet_size)

    def advance(self, positions: int) -> None:
        self.position += positions

    def _learn(self, tape: Tape, logits: torch.Tensor, targets: np.ndarray, start: int) -> None:
        """A step of the learner from positions start.. (targets: the model inputs that followed
        them), where each row still had tokens."""
        assert self.learner is not None
        steps = np.arange(start, start + targets.shape[1]) - self.prefix_length
        targets = np.where(steps[None] < self.lengths[:, None], targets, -1)
        self.learner.learn(tape, logits, torch.from_numpy(targets).to(logits.device))

    def forced(self, input_ids: np.ndarray, targets: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """Teacher forcing of sequences in lockstep, input_ids [rows, n] (call `start(rows, n)`
        first): the weights after each input, [rows, positions, alphabet], FORCED_BLOCK rows x
        positions at a time (each array valid until the next); the same numbers `step` gives.
        With a learner, learning.SEGMENT positions at a time, learning from `targets` (the model inputs
        that follow each position) before the next."""
        ids = torch.from_numpy(input_ids).to(self.model.device)
        rows, block = len(ids), learning.SEGMENT if self.learner else max(1, FORCED_BLOCK // len(ids))
        for first in range(0, ids.shape[1], block):
            start, x = self.position, self.model.embed[ids[:, first : first + block]]
            tape = self.learner.tape() if self.learner else None  # only Llama models learn
            logits = (
                self.model.forward(x, start, self.cache)
                if tape is None
                else self.model.forward(x, start, self.cache, tape)
            )
            self.position += logits.shape[1]
            yield self._weights(logits.flatten(0, 1)).reshape(rows, -1, self.alphabet_size)
            if tape is not None and first + block < ids.shape[1]:  # the decoder learns when it steps on
                assert targets is not None
                self._learn(tape, logits, targets[:, first : first + block], start)

    def _weights(self, logits: torch.Tensor) -> np.ndarray:
        # Escape symbols beyond the vocabulary get weight 0; the coder lifts every symbol to its
        # smallest representable probability. They are zeroed at every call: the caller writes
        # into the array it got (side models' n-gram counts), escapes included.
        if self.weights.shape[0] < len(logits):
            self.weights = torch.zeros(len(logits), self.alphabet_size, dtype=torch.float64)
        weights = self.weights[: len(logits)]
        weights[:, logits.shape[-1] :] = 0
        return arithmetic.softmax_weights(logits.cpu(), weights).numpy()


def state_bytes(model: PreTrainedModel, rows: int, positions: int, alphabet_size: int, precision: str) -> int:
    """Memory the float predictor's state takes: every row's KV cache over `positions`, and its probabilities."""
    c = model.config
    heads = getattr(c, "num_attention_heads", 0) or 1
    head_dim = getattr(c, "head_dim", None) or getattr(c, "hidden_size", 0) // heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    per_position = 2 * getattr(c, "num_hidden_layers", 0) * kv_heads * head_dim * DTYPES[precision].itemsize
    return rows * (positions * per_position + 4 * alphabet_size)


def cache_bytes(model: PreTrainedModel, precision: str, rows: int, positions: int) -> int:
    """KV cache memory of `rows` sequences of `positions`, exact or float."""
    if precision == EXACT:
        architecture = exact_architecture(model)
        config = architecture.Config.of(model)
        key_levels = architecture.key_levels(config, architecture.NAME)
        return rows * positions * KVCache.bytes_per_position(config, key_levels)
    return state_bytes(model, rows, positions, 0, precision)
