"""The language model as a next-token predictor, stepped one token at a time over a batch of rows.

Encoder and decoder both call `step` with the same rows in the same order, so they see the
same floats. Teacher forcing is not used for encoding: on torch CPU it gives different floats
from KV-cache steps, and the decoder can only run KV-cache steps.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

# With 1 or 2-3 rows torch picks other kernels, whose row results depend on the batch size and
# thread count; from 4 rows on each row's result is independent of the others (shared/FACTS.md).
MIN_ROWS = 4


class Predictor:
    """Holds one KV cache for `rows` sequences advanced in lockstep."""

    def __init__(self, model: PreTrainedModel, rows: int, alphabet_size: int) -> None:
        if rows < MIN_ROWS:
            raise ValueError(f"rows must be at least {MIN_ROWS}")
        self.model = model
        self.rows = rows
        self.vocab = model.get_output_embeddings().weight.shape[0]
        # Escape symbols beyond the vocabulary get probability 0 here; the coder lifts every
        # symbol to its smallest representable probability.
        self.probs = np.zeros((rows, alphabet_size), dtype=np.float32)
        self.cache = DynamicCache()

    def reset(self) -> None:
        self.cache = DynamicCache()

    @torch.inference_mode()
    def step(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed one token per row; return each row's next-token probabilities over the alphabet."""
        ids = torch.from_numpy(input_ids.astype(np.int64)).view(self.rows, 1)
        out = self.model(input_ids=ids, past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        self.probs[:, : self.vocab] = torch.softmax(out.logits[:, -1, :].float(), dim=-1).numpy()
        return self.probs
