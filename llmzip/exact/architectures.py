"""The architectures with an exact forward (exact/llama.py, exact/gemma3.py), and which one a
Hugging Face model is."""

from __future__ import annotations

from transformers import PreTrainedModel

from .gemma3 import ExactGemma3
from .llama import ExactLlama

ExactModel = ExactLlama | ExactGemma3
EXACT_ARCHITECTURES: tuple[type[ExactModel], ...] = (ExactLlama, ExactGemma3)


def exact_architecture(model: PreTrainedModel) -> type[ExactModel] | None:
    """The exact implementation of `model`'s architecture and configuration, if llmzip has one."""
    return next((cls for cls in EXACT_ARCHITECTURES if cls.config_of(model) is not None), None)


def has_exact(model: PreTrainedModel) -> bool:
    return exact_architecture(model) is not None


def can_learn(model: PreTrainedModel) -> bool:
    """Whether `model`'s exact architecture describes its preparation for learning.py (Llama)."""
    return hasattr(exact_architecture(model), "projection_maps")
