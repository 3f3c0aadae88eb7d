"""Trained steering: prefix vectors fitted with Adam to a file's own chunks, minimising their
code length (the teacher-forced cross-entropy). Only the encoder runs this; `steering.py` says
what the header stores of the result."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..tokenization import ByteTokenizer
from .soft_prompt import TrainOptions, random_vectors

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def embedding_scale(model: PreTrainedModel) -> float:
    """Standard deviation of the model's input embeddings (as the model scales them), the size
    random and initial trained vectors are drawn at."""
    with torch.no_grad():
        sample = model.get_input_embeddings()(torch.arange(min(4096, model.config.vocab_size)))
    return float(sample.float().std())


def training_batch(
    chunks: Sequence[np.ndarray], tokenizer: ByteTokenizer, options: TrainOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [start, t0 .. t(L-2)] and targets [t0 .. t(L-1)] of `options.chunks` chunks spread
    over the file, cut to `options.tokens` tokens; padded targets are -100 (ignored)."""
    picks = np.unique(np.linspace(0, len(chunks) - 1, min(options.chunks, len(chunks))).round().astype(int))
    rows = [chunks[i][: options.tokens] for i in picks]
    width = max(len(r) for r in rows)
    roles = tokenizer.roles
    inputs = np.full((len(rows), width), roles.start_id, dtype=np.int64)
    targets = np.full((len(rows), width), -100, dtype=np.int64)
    for k, row in enumerate(rows):
        inputs[k, 1 : len(row)] = roles.model_inputs(row[:-1])
        targets[k, : len(row)] = np.where(row < roles.model_vocab, row, -100)  # escapes: not the model's to learn
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def train(
    model: PreTrainedModel,
    tokenizer: ByteTokenizer,
    chunks: Sequence[np.ndarray],
    count: int,
    options: TrainOptions,
    autocast: bool = False,
    on_step: Callable[[float], None] | None = None,
) -> np.ndarray:
    """Fit `count` prefix vectors to the chunks by Adam on the teacher-forced cross-entropy
    (the code length in nats); return them as float32 [count, hidden]."""
    inputs, targets = training_batch(chunks, tokenizer, options)
    embed = model.get_input_embeddings()
    hidden = embed.weight.shape[1]
    init = random_vectors(options.seed, count, hidden, embedding_scale(model))
    vectors = torch.nn.Parameter(torch.from_numpy(init))
    optimizer = torch.optim.Adam([vectors], lr=options.lr)
    with torch.no_grad():
        tokens = embed(inputs).float()
    batch = inputs.shape[0]
    learnable = [p for p in model.parameters() if p.requires_grad]
    for p in learnable:  # gradients for the prefix only; the model is left as it was found
        p.requires_grad_(False)
    try:
        for _ in range(options.steps):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                x = torch.cat([vectors.unsqueeze(0).expand(batch, -1, -1), tokens], dim=1)
                logits = model(inputs_embeds=x).logits[:, count:]
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
            loss.backward()
            optimizer.step()
            if on_step:
                on_step(float(loss.detach()))
    finally:
        for p in learnable:
            p.requires_grad_(True)
    return vectors.detach().numpy().astype(np.float32)
