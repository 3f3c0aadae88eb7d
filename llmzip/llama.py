"""A Llama-family decoder step in plain torch: one token per row, a preallocated KV cache.

Hugging Face's forward pays for generality on every token (cache objects, masks, dispatch
through modules); coding runs hundreds of thousands of single-token steps, so this file
holds the same arithmetic as a short list of kernels, after nanoGPT and gpt-fast:
fused q|k|v and gate|up projections with weights prepacked for oneDNN, the residual
stream in float32, and attention over the cache prefix with each key/value head shared by
its group of query heads (no copies for grouped-query attention).

Only the arithmetic order must be reproducible: encoder and decoder run this same code on
the same rows, so they see the same floats. It need not match Hugging Face bit for bit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

# Precision -> dtype of activations and KV cache (the residual stream, norms and the final
# softmax stay float32). bf16 halves the memory traffic and runs on AMX / AVX512-BF16 units;
# int8 is torch's dynamic quantization of the projections, measured for comparison only.
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}


@dataclass(frozen=True)
class LlamaConfig:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    rms_eps: float
    rope_theta: float

    @classmethod
    def of(cls, model: PreTrainedModel) -> LlamaConfig | None:
        """The config if this step computes `model` exactly as its architecture defines, else None."""
        c = model.config
        rope = getattr(c, "rope_parameters", None) or {"rope_theta": getattr(c, "rope_theta", None)}
        plain = (
            c.model_type == "llama"
            and rope.get("rope_type", "default") == "default"
            and rope.get("rope_theta") is not None
            and c.hidden_act == "silu"
            and not getattr(c, "attention_bias", False)
            and not getattr(c, "mlp_bias", False)
        )
        if not plain:
            return None
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return cls(
            layers=c.num_hidden_layers,
            hidden=c.hidden_size,
            heads=c.num_attention_heads,
            kv_heads=c.num_key_value_heads,
            head_dim=head_dim,
            rms_eps=c.rms_norm_eps,
            rope_theta=float(rope["rope_theta"]),
        )


class PackedLinear:
    """y = x @ weight.T with the weight prepared once for `rows` rows. fp32 and bf16: reordered
    into oneDNN's blocked layout (1.3x faster than F.linear in float32, 1.6x in bfloat16 with
    AMX), or plain F.linear where oneDNN is missing. int8: torch's dynamic quantization (weights
    per output channel, activations per call over the whole batch; x stays float32)."""

    def __init__(self, weight: torch.Tensor, rows: int, precision: str) -> None:
        self.kind = "int8" if precision == "int8" else "mkldnn" if torch.backends.mkldnn.is_available() else "plain"
        if self.kind == "int8":
            scales = (weight.float().abs().amax(1).clamp(min=1e-12) / 127).double()
            with warnings.catch_warnings():  # quantized tensors are deprecated, the op is not
                warnings.simplefilter("ignore", UserWarning)
                zeros = torch.zeros_like(scales, dtype=torch.int64)
                quantized = torch.quantize_per_channel(weight.float(), scales, zeros, 0, torch.qint8)
            self.weight = torch.ops.quantized.linear_prepack(quantized, None)
        else:
            weight = weight.to(PRECISIONS[precision]).contiguous()
            self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, rows) if self.kind == "mkldnn" else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "int8":
            return torch.ops.quantized.linear_dynamic(x, self.weight, False)
        if self.kind == "mkldnn":
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [], "")
        return F.linear(x, self.weight)


@dataclass
class Block:
    attn_norm: torch.Tensor
    qkv: PackedLinear
    out: PackedLinear
    mlp_norm: torch.Tensor
    gate_up: PackedLinear
    down: PackedLinear


class LlamaStep:
    """Advances `rows` sequences by one token each per call, all at the same position."""

    NAME = "llmzip-llama-2"  # bump when the order of arithmetic changes: archives record it

    def __init__(self, model: PreTrainedModel, config: LlamaConfig, rows: int, precision: str) -> None:
        self.config, self.rows = config, rows
        self.dtype = PRECISIONS[precision]  # of activations and KV cache
        weights = {name: w.detach() for name, w in model.state_dict().items()}

        def linear(*names: str) -> PackedLinear:  # several names: one fused projection
            return PackedLinear(torch.cat([weights[n] for n in names]), rows, precision)

        def norm(name: str) -> torch.Tensor:  # norms run in float32 on the float32 residual stream
            return weights[name].float().contiguous()

        self.embed = weights["model.embed_tokens.weight"].float()
        self.blocks = []
        for i in range(config.layers):
            p = f"model.layers.{i}."
            attn, mlp = p + "self_attn.", p + "mlp."
            self.blocks.append(
                Block(
                    attn_norm=norm(p + "input_layernorm.weight"),
                    qkv=linear(attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"),
                    out=linear(attn + "o_proj.weight"),
                    mlp_norm=norm(p + "post_attention_layernorm.weight"),
                    gate_up=linear(mlp + "gate_proj.weight", mlp + "up_proj.weight"),
                    down=linear(mlp + "down_proj.weight"),
                )
            )
        self.final_norm = norm("model.norm.weight")
        tied = "lm_head.weight" not in weights  # small models share the embedding
        self.head = linear("model.embed_tokens.weight" if tied else "lm_head.weight")
        self.capacity = 0
        self.position = 0

    def reset(self, steps: int) -> None:
        """Start new sequences that will run at most `steps` tokens (the cache is reused when large enough)."""
        c = self.config
        if steps > self.capacity:
            shape = (c.layers, self.rows, c.kv_heads, steps, c.head_dim)
            self.keys = torch.empty(shape, dtype=self.dtype)
            self.values = torch.empty(shape, dtype=self.dtype)
            self.rotations = rotary_matrices(steps, c.head_dim, c.rope_theta).to(self.dtype)
            self.capacity = steps
        self.position = 0

    @torch.inference_mode()
    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Feed row r token `inputs[r]` (or, for float inputs [rows, hidden], that input embedding);
        return float32 logits [rows, vocab] for the next token."""
        if self.position >= self.capacity:
            raise ValueError("more steps than reset() allowed")
        x = inputs.float() if inputs.is_floating_point() else self.embed[inputs]
        logits = self.forward(x, self.position)
        self.position += 1
        return logits

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """The step at position t from the input embeddings x [rows, hidden], float32 (the residual
        stream); a plain function of its arguments, so torch.compile can take it."""
        c, rows = self.config, self.rows
        rotation = self.rotations[t : t + 1].squeeze(0)  # slices, not indices, keep t symbolic for torch.compile
        for i, block in enumerate(self.blocks):
            h = F.rms_norm(x, (c.hidden,), block.attn_norm, c.rms_eps).to(self.dtype)
            qkv = block.qkv(h).view(rows, c.heads + 2 * c.kv_heads, c.head_dim)
            qk = qkv[:, : c.heads + c.kv_heads] @ rotation  # queries and keys rotated in one product
            self.keys[i, :, :, t : t + 1] = qk[:, c.heads :, None]
            self.values[i, :, :, t : t + 1] = qkv[:, c.heads + c.kv_heads :, None]
            # One query per head ([rows, heads, 1, head_dim]): the CPU flash kernel's decode path, 25%
            # faster than folding each group of query heads into a query length of its key/value head.
            q = qk[:, : c.heads, None]
            keys, values = self.keys[i, :, :, : t + 1], self.values[i, :, :, : t + 1]
            attended = F.scaled_dot_product_attention(q, keys, values, enable_gqa=True)
            x = x + block.out(attended.reshape(rows, c.heads * c.head_dim))
            h = F.rms_norm(x, (c.hidden,), block.mlp_norm, c.rms_eps).to(self.dtype)
            gate, up = block.gate_up(h).chunk(2, dim=-1)
            x = x + block.down(F.silu(gate) * up)
        h = F.rms_norm(x, (c.hidden,), self.final_norm, c.rms_eps).to(self.dtype)
        return self.head(h).float()


def rotary_matrices(steps: int, head_dim: int, theta: float) -> torch.Tensor:
    """[steps, head_dim, head_dim]: x @ m[t] rotates x to position t, i.e. Hugging Face's
    x * cos + rotate_half(x) * sin, with the angles computed as it does (float32)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    angles = torch.outer(torch.arange(steps, dtype=torch.float32), inv_freq).repeat(1, 2)
    cos, sin = angles.cos(), angles.sin()
    half, j = head_dim // 2, torch.arange(head_dim)
    m = torch.zeros(steps, head_dim, head_dim)
    m[:, j, j] = cos
    m[:, j[half:], j[:half]] = -sin[:, :half]  # out[j] -= x[j + half] * sin[j], j < half
    m[:, j[:half], j[half:]] = sin[:, half:]  # out[j] += x[j - half] * sin[j], j >= half
    return m
