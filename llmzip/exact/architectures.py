"""The architectures with an exact forward (exact/llama.py, exact/gemma3.py), and which one a
Hugging Face model is."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .gemma3 import ExactGemma3
from .llama import ExactLlama

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ExactModel = ExactLlama | ExactGemma3
EXACT_ARCHITECTURES: tuple[type[ExactModel], ...] = (ExactLlama, ExactGemma3)


def exact_architecture(model: PreTrainedModel) -> type[ExactModel] | None:
    """The exact implementation of `model`'s architecture and configuration, if llmzip has one."""
    return next((cls for cls in EXACT_ARCHITECTURES if cls.Config.of(model) is not None), None)


def can_learn(architecture: type[ExactModel] | None) -> bool:
    """Whether an exact architecture describes its preparation for learning.py (Llama)."""
    return hasattr(architecture, "projection_maps")
