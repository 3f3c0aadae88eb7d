"""What the exact architectures share: the sizes every decoder has, and their prepared numbers
(integer projections and float tensors) saved, loaded and moved between devices."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from . import arithmetic
from .arithmetic import ExactLinear

if TYPE_CHECKING:
    from transformers import PreTrainedModel
    from typing_extensions import Self  # typing.Self from Python 3.11 on


@dataclass(frozen=True)
class DecoderConfig:
    """The sizes every decoder has; each architecture's config adds its own."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    rms_eps: float
    vocab: int


def decoder_fields(model: PreTrainedModel, head_dim: int) -> dict[str, Any] | None:
    """DecoderConfig's fields of a Hugging Face model, or None if a Hadamard matrix of its
    hidden, intermediate or head size is not built here."""
    c = model.config
    try:
        for n in (c.hidden_size, c.intermediate_size, head_dim):
            arithmetic.hadamard_factors(n)
    except ValueError:
        return None
    return {
        "layers": c.num_hidden_layers,
        "hidden": c.hidden_size,
        "intermediate": c.intermediate_size,
        "heads": c.num_attention_heads,
        "kv_heads": c.num_key_value_heads,
        "head_dim": head_dim,
        "rms_eps": c.rms_norm_eps,
        "vocab": model.get_output_embeddings().weight.shape[0],
    }


@dataclass
class Projections:
    """A block's integer projections: query/key/value and output, gate/up and down."""

    qkv: ExactLinear
    out: ExactLinear
    gate_up: ExactLinear
    down: ExactLinear


class PreparedModel:
    """Blocks (dataclasses of ExactLinear and Tensor fields), an ExactLinear `head` and the
    model-level tensors named in TENSORS; the subclass's constructor takes them by name."""

    ARCHITECTURE: ClassVar[str]  # its name in versions.FORWARDS
    NAME: ClassVar[str]  # the forward archives record
    FORWARDS: ClassVar[tuple[str, ...]]  # the forwards computed: NAME and older ones, whose archives still decode
    Config: ClassVar[type[DecoderConfig]]  # its sizes; Config.of(model) reads them from a Hugging Face model
    Block: ClassVar[type]
    TENSORS: ClassVar[tuple[str, ...]] = ("embed",)
    blocks: list
    head: ExactLinear

    def __init__(self, config: DecoderConfig, blocks: list, head: ExactLinear, **tensors: Tensor) -> None:
        self.config, self.blocks, self.head = config, blocks, head
        for name, tensor in tensors.items():
            setattr(self, name, tensor)
        self.device = torch.device("cpu")

    def _parts(self) -> dict[str, ExactLinear | Tensor]:
        parts: dict[str, ExactLinear | Tensor] = {name: getattr(self, name) for name in self.TENSORS}
        parts["head"] = self.head
        for i, block in enumerate(self.blocks):
            parts |= {f"{i}.{f.name}": getattr(block, f.name) for f in fields(block)}
        return parts

    def state(self) -> dict[str, Tensor]:
        """The prepared numbers (integer weights as int16), to save and load instead of preparing."""
        state = {}
        for name, part in self._parts().items():
            if isinstance(part, ExactLinear):
                state[f"{name}.weight"], state[f"{name}.scale"] = part.int_weight.cpu(), part.scale.cpu()
            else:
                state[name] = part.cpu()
        return state

    @classmethod
    def from_state(cls, config: DecoderConfig, state: dict[str, Tensor]) -> Self:
        def part(name: str, kind: object) -> ExactLinear | Tensor:
            if kind in (ExactLinear, "ExactLinear"):
                return ExactLinear(state[f"{name}.weight"], state[f"{name}.scale"])
            return state[name]

        blocks = [
            cls.Block(**{f.name: part(f"{i}.{f.name}", f.type) for f in fields(cls.Block)})
            for i in range(config.layers)
        ]
        tensors = {name: state[name] for name in cls.TENSORS}
        return cls(config, blocks=blocks, head=part("head", ExactLinear), **tensors)

    @staticmethod
    def key_levels(config: DecoderConfig, forward: str) -> int:
        """The cached keys' integer levels in `forward` (one of FORWARDS)."""
        raise NotImplementedError

    def to(self, device: torch.device) -> Self:
        self.device = device
        self.head.to(device)
        for name in self.TENSORS:
            setattr(self, name, getattr(self, name).to(device))
        for block in self.blocks:
            for f in fields(block):
                value = getattr(block, f.name)
                if isinstance(value, ExactLinear):
                    value.to(device)
                else:
                    setattr(block, f.name, value.to(device))
        return self
