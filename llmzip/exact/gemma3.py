"""The Gemma 3 architecture (gemma3-270m) as an exact predictor, in the operations of `arithmetic.py`.

Gemma differs from Llama in ways that decide where rotations can go:

- sandwich norms: the attention and MLP outputs are normalized, with a gain, before they are
  added to the residual stream, so the stream cannot be stored rotated (a per-channel gain
  after a norm does not commute with a rotation). It stays in the model's basis, and each
  projection that reads it rotates its normalized input online: 13-bit integers, times the
  norm's gain, 13 bits again, a Hadamard transform (exact), then 8 bits for the projection,
  whose weights hold H / n. The gain is applied to the activations, not folded into the
  weights: Gemma's gains range from 0 to 70, and its residual stream carries channels 20x
  its RMS that the gains then silence; folded, the noise of 8-bit weights and activations in
  the channels the gains amplify cost 10-30% of each projection's output;
- RMSNorm of each query and key head (gain 1 + w) before the rotary embedding, local layers
  with a sliding window and their own rotary base, GELU (tanh form) in the MLP, embeddings
  scaled by sqrt(hidden), and queries scaled by query_pre_attn_scalar**-0.5;
- head_dim 256: queries and keys take 8 bits (256 * 255**2 < 2**24); sink queries, rotated
  on the queries' scales, are clipped to 257 levels (256 * 257 * 255 < 2**24).

Value heads and the down projection's input are rotated as in `llama.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .. import versions
from . import arithmetic
from .arithmetic import ExactLinear, attention, hadamard, quantize, quantize_normed, quantize_rotated, rotary_quantize
from .kvcache import KVCache
from .prepared import DecoderConfig, PreparedModel, Projections, decoder_fields

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Version 3 pins the sinks before the window, as the Llama's forward 4, in every layer that attends
# them (`KVCache.sink_positions`: sequences may then run past the model's context); version 2 did not.
NAME = versions.NEWEST["gemma3"]  # archives record it: bump (versions.py) whenever any number computed here changes
FORWARDS = versions.forwards_of("gemma3")
V_LEVELS = 127  # as in llama.py
NORM_LEVELS = 8191  # 13 bits for what a norm reads and what a Hadamard transform rotates online


@dataclass(frozen=True)
class Gemma3Config(DecoderConfig):
    query_scale: float  # query_pre_attn_scalar ** -0.5
    window: int
    sliding: tuple[bool, ...]  # per layer: local (sliding-window) attention
    rope_theta: tuple[float, float]  # full, sliding

    @property
    def qk_levels(self) -> int:
        """The most integer levels of queries and keys whose dot products stay below 2**24."""
        return min(511, math.isqrt((arithmetic.EXACT_SUM - 1) // self.head_dim))

    @property
    def sink_levels(self) -> int:
        """The most levels of sink queries (on the queries' scales) whose dot products with keys stay below 2**24."""
        return (arithmetic.EXACT_SUM - 1) // (self.head_dim * self.qk_levels)

    @classmethod
    def of(cls, model: PreTrainedModel) -> Gemma3Config | None:
        """The config if `model` is a Gemma 3 text model this file computes as defined, else None."""
        c = model.config
        if c.model_type != "gemma3_text":
            return None
        rope = getattr(c, "rope_parameters", None) or {}
        kinds = ("full_attention", "sliding_attention")
        plain = (
            c.hidden_activation == "gelu_pytorch_tanh"
            and not getattr(c, "attention_bias", False)
            and getattr(c, "attn_logit_softcapping", None) is None
            and getattr(c, "final_logit_softcapping", None) is None
            and not getattr(c, "use_bidirectional_attention", False)
            and set(c.layer_types) <= set(kinds)
            and all((rope.get(k) or {}).get("rope_type", "default") == "default" for k in kinds)
            and all((rope.get(k) or {}).get("rope_theta") for k in kinds)
            and c.hidden_size * NORM_LEVELS < arithmetic.EXACT_SUM
            and c.intermediate_size * NORM_LEVELS < arithmetic.EXACT_SUM
        )
        sizes = decoder_fields(model, c.head_dim) if plain else None
        if sizes is None:
            return None
        return cls(
            **sizes,
            query_scale=c.query_pre_attn_scalar**-0.5,
            window=c.sliding_window,
            sliding=tuple(t == "sliding_attention" for t in c.layer_types),
            rope_theta=tuple(float(rope[k]["rope_theta"]) for k in kinds),
        )


@dataclass
class Block(Projections):
    input_gain: Tensor  # 1 + w of the norms before attention and before the MLP [hidden]
    mlp_input_gain: Tensor
    query_gain: Tensor  # of the query and key norms [head_dim]
    key_gain: Tensor
    attention_gain: Tensor  # of the norms after attention and after the MLP [hidden]
    mlp_gain: Tensor


class ExactGemma3(PreparedModel):
    """The prepared model: call `forward` with input embeddings and the position of the first."""

    ARCHITECTURE = "gemma3"
    NAME = NAME
    FORWARDS = FORWARDS
    Block = Block
    TENSORS = ("embed", "final_gain")
    config: Gemma3Config
    embed: Tensor  # input embeddings, scaled [vocab, hidden]
    final_gain: Tensor  # 1 + w of the norm before the head [hidden]

    def __init__(
        self, config: Gemma3Config, blocks: list[Block], head: ExactLinear, embed: Tensor, final_gain: Tensor
    ) -> None:
        super().__init__(config, blocks, head, embed=embed, final_gain=final_gain)
        self.tables: list[tuple[Tensor, Tensor]] = []  # cos, sin: full, sliding

    Config = Gemma3Config

    @classmethod
    def prepare(cls, model: PreTrainedModel, config: Gemma3Config) -> ExactGemma3:
        """Fold the online rotations into the projections, rotate the value heads and the down
        projection's input, and quantize per output channel (float64, every sum exact: the same
        integers on every machine)."""
        c = config
        w = {name: t.detach().double() for name, t in model.state_dict().items()}

        def reads_residual(weight: Tensor) -> Tensor:
            """A projection made to read its input rotated online (by H, not H / sqrt(n))."""
            return arithmetic.rotate_weights(weight, 1 / c.hidden)

        def per_head(weight: Tensor, heads: int) -> Tensor:
            parts = weight.reshape(*weight.shape[:-1], heads, c.head_dim)
            return arithmetic.rotate_weights(parts, 1 / math.sqrt(c.head_dim)).reshape(weight.shape)

        def gain(name: str) -> Tensor:
            return (1 + w[name]).float()

        blocks = []
        for i in range(c.layers):
            p = f"model.layers.{i}."
            attn, mlp = p + "self_attn.", p + "mlp."
            values = per_head(w[attn + "v_proj.weight"].T, c.kv_heads).T
            qkv = torch.cat([w[attn + "q_proj.weight"], w[attn + "k_proj.weight"], values])
            gate_up = torch.cat([w[mlp + "gate_proj.weight"], w[mlp + "up_proj.weight"]])
            down = arithmetic.rotate_weights(w[mlp + "down_proj.weight"], 1 / c.intermediate)
            blocks.append(
                Block(
                    qkv=ExactLinear.of(reads_residual(qkv)),
                    out=ExactLinear.of(per_head(w[attn + "o_proj.weight"], c.heads)),
                    gate_up=ExactLinear.of(reads_residual(gate_up)),
                    down=ExactLinear.of(down),
                    input_gain=gain(p + "input_layernorm.weight"),
                    mlp_input_gain=gain(p + "pre_feedforward_layernorm.weight"),
                    query_gain=gain(attn + "q_norm.weight"),
                    key_gain=gain(attn + "k_norm.weight"),
                    attention_gain=gain(p + "post_attention_layernorm.weight"),
                    mlp_gain=gain(p + "post_feedforward_layernorm.weight"),
                )
            )
        table = model.get_input_embeddings().weight.detach().float()
        embed = table * torch.tensor(c.hidden**0.5)  # as Hugging Face scales them: one float32 product
        head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        return cls(
            config, blocks, ExactLinear.of(reads_residual(head)), embed=embed, final_gain=gain("model.norm.weight")
        )

    @staticmethod
    def key_levels(config: Gemma3Config, forward: str) -> int:
        return config.qk_levels

    def new_cache(
        self,
        rows: int,
        positions: int,
        window: int | None = None,
        sinks: int = 0,
        forward: str = NAME,
        history: int = 0,
    ) -> KVCache:
        if not self.tables or self.tables[0][0].shape[0] < positions:
            self.tables = [
                tuple(t.to(self.device) for t in arithmetic.rotary_table(positions, self.config.head_dim, theta))
                for theta in self.config.rope_theta
            ]
        return KVCache.of(self, forward, rows, positions, window, sinks, history)

    def embed_vectors(self, vectors: Tensor) -> Tensor:
        """Input embeddings given as vectors (steering), as the model reads them."""
        return vectors.float().to(self.device)

    def _read(self, x: Tensor, gain: Tensor | None) -> tuple[Tensor, Tensor]:
        """8-bit integers and row scales of RMSNorm(x) * gain (of x itself if gain is None)
        times the rotation H: 13-bit integers, an exact Hadamard transform, then 8 bits."""
        if gain is None:
            return quantize_rotated(x, NORM_LEVELS)
        q, factor = quantize_normed(x, self.config.rms_eps, NORM_LEVELS)
        q, scale = quantize(q * gain, NORM_LEVELS)
        r, r_scale = quantize(hadamard(q), arithmetic.ACTIVATION_LEVELS)
        return r, r_scale * (scale * factor)

    def _head_norm(
        self, x: Tensor, gain: Tensor, cos: Tensor, sin: Tensor, pinned: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """RMSNorm of each head with its gain, the rotary embedding, and 8-bit integers with scales
        [rows, heads, T, 1], heads before positions as attention reads them; and, with the sinks'
        `pinned` tables, the same vectors rotated there, on the same scales (`attention`'s sink_q)."""
        normed, factor = quantize_normed(x, self.config.rms_eps, NORM_LEVELS)
        normed = normed * gain
        q, scale = rotary_quantize(normed, cos, sin, self.config.qk_levels)
        sink_q = None if pinned is None else rotary_quantize(normed, *pinned, self.config.sink_levels, scale)[0]
        return q, scale * factor.transpose(1, 2), sink_q

    def _normed(self, x: Tensor, gain: Tensor) -> Tensor:
        """RMSNorm(x) * gain for an output about to join the residual stream."""
        q, factor = quantize_normed(x, self.config.rms_eps, NORM_LEVELS)
        return q * factor * gain

    @torch.inference_mode()
    def forward(self, x: Tensor, start: int, cache: KVCache) -> Tensor:
        """Input embeddings x [rows, T, hidden] (rows of `self.embed`, or `embed_vectors`) at
        positions start..start+T-1 -> float32 logits [rows, T, vocab]; fills the cache."""
        c = self.config
        rows, length, _ = x.shape
        end = start + length
        groups = c.heads // c.kv_heads
        tables = [(cos[start:end, None], sin[start:end, None]) for cos, sin in self.tables]
        cache.make_room(start, length)
        # Of each query row, as attention lays them out: slots, window and sinks of full and local layers.
        attended = [cache.attended(start, length, window) for window in (None, c.window)]
        attended = [(slots.repeat(groups), window, sinks) for slots, window, sinks in attended]
        pinned = cache.sink_positions(start, length)
        sink_tables = [None if pinned is None else (cos[pinned, None], sin[pinned, None]) for cos, sin in self.tables]
        key_scale = arithmetic.LOG2E * c.query_scale  # scores in log2 units
        for i, block in enumerate(self.blocks):
            cos, sin = tables[c.sliding[i]]
            h, h_scale = self._read(x, block.input_gain)
            qkv = block.qkv(h, h_scale).view(rows, length, c.heads + 2 * c.kv_heads, c.head_dim)
            k, k_scale, _ = self._head_norm(qkv[:, :, c.heads : c.heads + c.kv_heads], block.key_gain, cos, sin)
            v, v_scale = quantize(qkv[:, :, c.heads + c.kv_heads :].transpose(1, 2), V_LEVELS)
            cache.write(i, start, k, (k_scale * key_scale).squeeze(-1), v, v_scale.squeeze(-1))
            _, _, sinks = attended[c.sliding[i]]  # local layers have sinks only if the window is no longer than theirs
            sink_pins = sink_tables[c.sliding[i]] if sinks else None
            q, q_scale, sink_q = self._head_norm(qkv[:, :, : c.heads], block.query_gain, cos, sin, sink_pins)
            # [rows, kv_heads, groups * T, head_dim]: each key/value head with all its queries
            q = q.reshape(rows, c.kv_heads, groups * length, c.head_dim)
            q_scale = q_scale.reshape(rows, c.kv_heads, groups * length, 1)
            if sink_q is not None:
                sink_q = sink_q.reshape(q.shape)
            o = attention(q, q_scale, *cache.read(i, end), *attended[c.sliding[i]], sink_q)
            o = o.view(rows, c.heads, length, c.head_dim).transpose(1, 2)
            o, o_scale = quantize(o.reshape(rows, length, c.heads * c.head_dim), arithmetic.ACTIVATION_LEVELS)
            x = x + self._normed(block.out(o, o_scale), block.attention_gain)
            h, h_scale = self._read(x, block.mlp_input_gain)
            gate, up = block.gate_up(h, h_scale).chunk(2, dim=-1)
            a, a_scale = self._read(arithmetic.gelu_tanh_mul(gate, up), None)
            x = x + self._normed(block.down(a, a_scale), block.mlp_gain)
        h, h_scale = self._read(x, self.final_gain)
        return self.head(h, h_scale)
