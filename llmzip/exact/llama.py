"""The Llama architecture (SmolLM2) as an exact predictor: logits that are a function of the
weights and the token history alone, written in the operations of `arithmetic.py`.

The weights are prepared once (QuaRot, Ashkboos et al. 2024): the RMSNorm gains are folded
into the projections that read the norms, the residual stream is rotated by a Hadamard
matrix, each value head and its slice of the output projection by another, and the down
projection's input by a third, applied online; then every projection is quantized per output
channel. Rotations spread the outliers that 8-bit activations could not carry. Every
projection input is quantized per row to 8 bits, queries per head to 10 bits, keys and values
to 8, and attention runs in integers (`arithmetic.attention`).

One forward serves teacher forcing (many positions of a chunk at once, for the encoder) and
KV-cache steps (one position for many chunks, for the decoder): a position's numbers do not
depend on which other positions or rows are computed with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .. import versions
from . import arithmetic
from .arithmetic import ExactLinear, attention, quantize, quantize_normed, quantize_rotated, rotary_quantize
from .kvcache import KVCache
from .prepared import DecoderConfig, PreparedModel, Projections, decoder_fields

if TYPE_CHECKING:
    from transformers import PreTrainedModel

QUERY_LEVELS = 511  # 10-bit queries
SINK_QUERY_LEVELS = 723  # sink queries, on the queries' scales: within sqrt(2) * 511 (head_dim * 723 * 127 < 2**24)
# The forwards computed here differ in their keys' levels (versions.FORWARDS) and in pinning
# the sinks before the window (`KVCache.sink_positions`).
NAME = versions.NEWEST["llama"]  # archives record it: bump (versions.py) whenever any number computed here changes
FORWARDS = versions.forwards_of("llama")
KEY_LEVELS = {forward: versions.FORWARDS[forward].key_levels for forward in FORWARDS}
V_LEVELS = 127  # attention weights sum to ~2**16, so 2**16 * 127 * (1 + ...) < 2**24
DOWN_LEVELS = 8191  # the down projection's input before its Hadamard: 13 bits, n * 8191 < 2**24


@dataclass(frozen=True)
class LlamaConfig(DecoderConfig):
    rope_theta: float

    @classmethod
    def of(cls, model: PreTrainedModel) -> LlamaConfig | None:
        """The config if `model` is a Llama this file computes as its architecture defines, else None."""
        c = model.config
        rope = getattr(c, "rope_parameters", None) or {"rope_theta": getattr(c, "rope_theta", None)}
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        plain = (
            c.model_type == "llama"
            and rope.get("rope_type", "default") == "default"
            and rope.get("rope_theta") is not None
            and c.hidden_act == "silu"
            and not getattr(c, "attention_bias", False)
            and not getattr(c, "mlp_bias", False)
            and head_dim * QUERY_LEVELS * max(KEY_LEVELS.values()) < arithmetic.EXACT_SUM
            and head_dim * SINK_QUERY_LEVELS * KEY_LEVELS[NAME] < arithmetic.EXACT_SUM
            and c.hidden_size <= arithmetic.MAX_PIECE  # exact sums of squares in the norms
        )
        sizes = decoder_fields(model, head_dim) if plain else None
        return None if sizes is None else cls(**sizes, rope_theta=float(rope["rope_theta"]))


HEAD = (-1, "head")  # the head's key among the projections'


@dataclass(frozen=True)
class ProjectionMap:
    """A projection's weights as the checkpoint has them (float64), and the linear maps of
    preparation: `prepare(weights, out=None)` takes checkpoint weights to the prepared ones
    (rotated, gains folded; then quantized), written into `out` if given (contiguous float64).
    Preparation is A · W · diag(gain) · B, so the gradient of the checkpoint's weights,
    A.T · G.T X · B.T · diag(gain) for the prepared outputs' gradients G [T, N] and inputs
    X [T, K], is outputs_back(G).T @ inputs_back(X): what the checkpoint's projection would read
    and would get back, each taken back in [T, ·] rows rather than in [N, K] (learning.py steps
    in these coordinates: in the prepared ones a step per weight would do something else)."""

    weight: Tensor
    prepare: Callable[..., Tensor]
    outputs_back: Callable[[Tensor], Tensor]
    inputs_back: Callable[[Tensor], Tensor]


@dataclass
class BlockTape:
    """What one block's forward computed that its backward reads (learning.py): integer
    activations with their scales, attention's integer operands and masks, the MLP's gate and up."""

    x: Tensor  # the residual stream coming in [rows, T, hidden], and its norm's integers and scales
    h: Tensor
    h_scale: Tensor
    q: Tensor  # attention's layout: [rows, kv_heads, groups * T, head_dim]
    q_scale: Tensor
    sink_q: Tensor | None
    keys: Tensor  # the cache's, [rows, kv_heads, slots, head_dim], scales [rows, kv_heads, 1, slots]
    key_scales: Tensor
    values: Tensor
    value_scales: Tensor
    positions: Tensor
    window: int
    sinks: int
    o: Tensor  # attention's output as the output projection reads it [rows, T, heads * head_dim]
    o_scale: Tensor
    x_mid: Tensor  # the residual stream after attention, and its norm's integers and scales
    h2: Tensor
    h2_scale: Tensor
    gate: Tensor
    up: Tensor
    a: Tensor  # the down projection's rotated integer input
    a_scale: Tensor


@dataclass
class Tape:
    """A forward's record for learning: its first position, where its queries saw the sinks
    from (`KVCache.sink_positions`), the records of blocks `first`.. (those that learn), and the
    head's input (x, h, h_scale)."""

    first: int = 0
    start: int = 0
    pinned: Tensor | None = None
    blocks: list[BlockTape] = field(default_factory=list)
    final: tuple[Tensor, ...] = ()


class ExactLlama(PreparedModel):
    """The prepared model: call `forward` with input embeddings and the position of the first."""

    ARCHITECTURE = "llama"
    NAME = NAME
    FORWARDS = FORWARDS
    Block = Projections
    whole_steps = True  # decoding steps in one kernel call where the kernels are built (tests turn it off)
    config: LlamaConfig
    embed: Tensor  # input embeddings, rotated [vocab, hidden]

    def __init__(self, config: LlamaConfig, blocks: list[Projections], head: ExactLinear, embed: Tensor) -> None:
        super().__init__(config, blocks, head, embed=embed)
        self.cos, self.sin = torch.empty(0), torch.empty(0)

    Config = LlamaConfig

    @classmethod
    def prepare(cls, model: PreTrainedModel, config: LlamaConfig) -> ExactLlama:
        """Fold, rotate and quantize a Hugging Face Llama's weights (seconds: in float64, with
        every sum exact, so that every machine gets the same integers)."""
        parts = {key: ExactLinear.of(m.prepare(m.weight)) for key, m in cls.projection_maps(model, config).items()}
        names = [f.name for f in fields(Projections)]
        blocks = [Projections(**{name: parts[i, name] for name in names}) for i in range(config.layers)]
        embed = arithmetic.rotate_weights(model.state_dict()["model.embed_tokens.weight"], 1 / math.sqrt(config.hidden))
        return cls(config, blocks, parts[HEAD], embed=embed.float())

    @staticmethod
    def projection_maps(model: PreTrainedModel, config: LlamaConfig) -> dict[tuple[int, str], ProjectionMap]:
        """Each projection's checkpoint weights (float64) and the linear maps between them and
        the prepared ones, keyed (block, field), the head as HEAD."""
        c = config
        w = {name: t.detach().double() for name, t in model.state_dict().items()}
        into = 1 / math.sqrt(c.hidden)  # exact for 576 = 24**2; any rounding is the same everywhere

        def stream(weight: Tensor, back: bool = False, out: Tensor | None = None, dim: int = -1) -> Tensor:
            """The last axis (or `dim`) rotated as the residual stream is (orthogonal: H/24), or back."""
            return arithmetic.rotate_weights(weight, into, back, out, dim)

        def value_heads(weight: Tensor, heads: int, back: bool = False) -> Tensor:
            """Each head's slice of the last axis rotated as values are (orthogonal: H/8), or back."""
            parts = weight.reshape(*weight.shape[:-1], heads, c.head_dim)
            return arithmetic.rotate_weights(parts, 1 / math.sqrt(c.head_dim), back).reshape(weight.shape)

        def out_input(weight: Tensor, back: bool) -> Tensor:
            return value_heads(weight, c.heads, back)

        def down_input(weight: Tensor, back: bool) -> Tensor:
            """H/1536 against the activations' online Hadamard H (not orthogonal)."""
            return arithmetic.rotate_weights(weight, 1 / c.intermediate, back)

        values = (c.heads + c.kv_heads) * c.head_dim  # outputs before the values'

        def qkv_output(g: Tensor, back: bool) -> Tensor:
            """The values among the last axis rotated per head: values come out rotated."""
            return torch.cat([g[:, :values], value_heads(g[:, values:], c.kv_heads, back)], -1)

        def no_turn(g: Tensor, back: bool) -> Tensor:
            return g

        def reads_residual(weight: Tensor, gain: Tensor, output: Callable = no_turn) -> ProjectionMap:
            """A projection reading RMSNorm(x) * gain, made to read the rotated stream's norm."""
            return ProjectionMap(
                weight,
                lambda v, out=None: stream(torch.mul(output(v.T, False).T, gain, out=out), out=out),
                lambda g: output(g, True),
                lambda x: stream(x, True) * gain,
            )

        def writes_residual(weight: Tensor, input_turn: Callable) -> ProjectionMap:
            """A projection whose output is added to the residual stream, made to write it rotated."""
            return ProjectionMap(
                weight,
                lambda v, out=None: stream(input_turn(v, False), out=out, dim=0),
                lambda g: stream(g, True),
                lambda x: input_turn(x, True),
            )

        maps = {}
        for i in range(c.layers):
            p = f"model.layers.{i}."
            attn, mlp = p + "self_attn.", p + "mlp."
            qkv = torch.cat([w[attn + "q_proj.weight"], w[attn + "k_proj.weight"], w[attn + "v_proj.weight"]])
            gate_up = torch.cat([w[mlp + "gate_proj.weight"], w[mlp + "up_proj.weight"]])
            maps[i, "qkv"] = reads_residual(qkv, w[p + "input_layernorm.weight"], qkv_output)
            maps[i, "out"] = writes_residual(w[attn + "o_proj.weight"], out_input)
            maps[i, "gate_up"] = reads_residual(gate_up, w[p + "post_attention_layernorm.weight"])
            maps[i, "down"] = writes_residual(w[mlp + "down_proj.weight"], down_input)
        head = w.get("lm_head.weight", w["model.embed_tokens.weight"])  # small models tie them
        maps[HEAD] = reads_residual(head, w["model.norm.weight"])
        return maps

    @staticmethod
    def key_levels(config: LlamaConfig, forward: str) -> int:
        return KEY_LEVELS[forward]

    def new_cache(
        self,
        rows: int,
        positions: int,
        window: int | None = None,
        sinks: int = 0,
        forward: str = NAME,
        history: int = 0,
    ) -> KVCache:
        """A cache for `forward` (one of FORWARDS): `forward` computes with its keys."""
        if self.cos.shape[0] < positions:
            cos, sin = arithmetic.rotary_table(positions, self.config.head_dim, self.config.rope_theta)
            self.cos, self.sin = cos.to(self.device), sin.to(self.device)
        return KVCache.of(self, forward, rows, positions, window, sinks, history)

    def embed_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """Input embeddings given as vectors (steering) in the model's own basis, rotated."""
        rotated = arithmetic.rotate_weights(vectors.cpu(), 1 / math.sqrt(self.config.hidden))
        return rotated.float().to(self.device)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, start: int, cache: KVCache, tape: Tape | None = None) -> torch.Tensor:
        """Input embeddings x [rows, T, hidden] (rows of `self.embed`, or `embed_vectors`) at
        positions start..start+T-1 -> float32 logits [rows, T, vocab]; fills the cache, and
        `tape` if given."""
        c = self.config
        rows, length, _ = x.shape
        end = start + length
        groups = c.heads // c.kv_heads
        cos, sin = self.cos[start:end, None], self.sin[start:end, None]
        cache.make_room(start, length)
        slots, window, sinks = cache.attended(start, length)
        positions = slots.repeat(groups)  # of each query row, as attention lays them out
        pinned = cache.sink_positions(start, length)
        sink_cos, sink_sin = (None, None) if pinned is None else (self.cos[pinned, None], self.sin[pinned, None])
        key_scale = arithmetic.LOG2E / math.sqrt(c.head_dim)  # scores in log2 units
        if (
            tape is None
            and self.whole_steps
            and groups * length <= arithmetic.CACHED_QUERIES
            and x.is_cpu
            and x.dtype == torch.float32
            and (fused := arithmetic.kernels())
        ):  # csrc/llama_forward.cpp: the loop below in one call
            weights = [getattr(b, f.name) for b in self.blocks for f in fields(b)] + [self.head]
            down_factors, sylvester = arithmetic.hadamard_factors(c.intermediate)
            none = torch.empty(0)
            return fused.llama_forward(
                x, [w.packed for w in weights], [w.scale for w in weights], cos, sin,
                none if sink_cos is None else sink_cos, none if sink_sin is None else sink_sin,
                [cache.keys, cache.key_scales, cache.values, cache.value_scales],
                cache.slot(start), cache.slot(end - 1) + 1, positions, window, sinks,
                [c.heads, c.kv_heads, c.head_dim],
                [cache.key_levels, QUERY_LEVELS, SINK_QUERY_LEVELS, V_LEVELS, DOWN_LEVELS,
                 arithmetic.ACTIVATION_LEVELS, arithmetic.TINY],
                c.rms_eps, key_scale, arithmetic.LOG2E, list(down_factors), sylvester,
            )  # fmt: skip
        for i, block in enumerate(self.blocks):
            h, h_scale = quantize_normed(x, c.rms_eps)
            qkv = block.qkv(h, h_scale).view(rows, length, c.heads + 2 * c.kv_heads, c.head_dim)
            k, k_scale = rotary_quantize(qkv[:, :, c.heads : c.heads + c.kv_heads], cos, sin, cache.key_levels)
            v, v_scale = quantize(qkv[:, :, c.heads + c.kv_heads :].transpose(1, 2), V_LEVELS)
            cache.write(i, start, k, (k_scale * key_scale).squeeze(-1), v, v_scale.squeeze(-1))
            q, q_scale = rotary_quantize(qkv[:, :, : c.heads], cos, sin, QUERY_LEVELS)
            # [rows, kv_heads, groups * T, head_dim]: each key/value head with all its queries
            sink_q = None
            if pinned is not None:
                sink_q, _ = rotary_quantize(qkv[:, :, : c.heads], sink_cos, sink_sin, SINK_QUERY_LEVELS, q_scale)
                sink_q = sink_q.reshape(rows, c.kv_heads, groups * length, c.head_dim)
            q = q.reshape(rows, c.kv_heads, groups * length, c.head_dim)
            q_scale = q_scale.reshape(rows, c.kv_heads, groups * length, 1)
            kv = cache.read(i, end)
            o = attention(q, q_scale, *kv, positions, window, sinks, sink_q)
            o = o.view(rows, c.kv_heads, groups, length, c.head_dim).permute(0, 3, 1, 2, 4)
            o, o_scale = quantize(o.reshape(rows, length, c.heads * c.head_dim), arithmetic.ACTIVATION_LEVELS)
            x_mid = x + block.out(o, o_scale)
            h2, h2_scale = quantize_normed(x_mid, c.rms_eps)
            gate, up = block.gate_up(h2, h2_scale).chunk(2, dim=-1)
            a, a_scale = quantize_rotated(arithmetic.silu_mul(gate, up), DOWN_LEVELS)
            if tape is not None and i >= tape.first:
                tape.blocks.append(BlockTape(x, h, h_scale, q, q_scale, sink_q, *kv, positions, window, sinks,
                                             o, o_scale, x_mid, h2, h2_scale, gate, up, a, a_scale))  # fmt: skip
            x = x_mid + block.down(a, a_scale)
        h, h_scale = quantize_normed(x, c.rms_eps)
        if tape is not None:
            tape.start, tape.pinned, tape.final = start, pinned, (x, h, h_scale)
        return self.head(h, h_scale)
