"""Dynamic evaluation, exactly: after each segment of tokens the model's weights take one step
against that segment's code length (Krause et al. 2018), on the encoder's side and on the
decoder's, which computes the same step from the same tokens. The step is RMSprop's: each
weight moves by RATE over the running RMS of its gradient.

The backward pass is written in `arithmetic.py`'s two kinds of operation, so that every machine
takes the same step: each product's operands are quantized to integers first (the gradient
per token or per output channel, the forward's own integer activations and weights) and
multiplied in float64, where every sum of such integers is exact below 2**53 in any order;
everything else is elementwise IEEE arithmetic and `exact`'s exp and sqrt. The gradient may be
any function of the segment: this one is the code length's, with straight-through rounding,
and no gradient reaches keys and values of earlier segments (they are in the cache).
Measured in float (benchmarks/dynamic_eval.py): alice29.txt 1.1066 -> 0.9958 bits per byte.

Learning keeps float64 master weights in the checkpoint's coordinates beside the model's
integer ones: a step moves the masters, prepares them again (`llama.ProjectionMap`) and
quantizes them per output channel to the forward's grid (229 levels lose nothing against
float weights: benchmarks/dynamic_eval.py, `--variants grid`). The gradient is taken there
directly, from each projection's inputs and output gradients turned back per token, not as a
matrix rotated back.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import arithmetic
from .arithmetic import ExactLinear, quantize
from .llama import HEAD, BlockTape, ExactLlama, ProjectionMap, Tape

SEGMENT = 128  # tokens coded between two steps
RATE = 6e-5  # per weight, over the RMS of its gradient (float, alice29.txt's first 8000 tokens: 3e-5 and 1e-4 worse)
DECAY = 0.99  # of the running mean square, per step
EPSILON = 1e-8
GRADIENT_LEVELS = 32767  # activations' gradients per token: 16 bits
LOGIT_LEVELS = 2**23  # the logits' gradient per token: 24 bits (8 lose the tail of q and break learning)
PROBABILITY_BITS = 24  # q in the logits' gradient q - [y = x], fixed point
CHANNEL_LEVELS = 2**20  # weight gradients' factors per output channel: 2**20 * 2**16 * tokens < 2**53
INPUT_LEVELS = 2**16 - 1  # the checkpoint's projection inputs per token, for its weights' gradient
FINE_LEVELS = 2**20  # softmax and rotation gradients per row
TINY_SQUARE = 1e-30  # the least mean square read (float32): no subnormal numbers, whose handling CPUs may flush


def _product(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """a @ b of integer-valued tensors in float64: exact while every sum stays below 2**53."""
    return torch.matmul(a.double(), b.double(), out=out)


def _integer_sum(a: Tensor, b: Tensor) -> Tensor:
    """sum(a * b) over the last axis, of integer-valued tensors, in float64: exact."""
    return (a.double() * b.double()).sum(-1, keepdim=True)


@dataclass
class WeightGradient:
    """A projection's weight gradient as integers [N, K] times a scale per output channel [N, 1]."""

    integers: Tensor
    scale: Tensor


def linear_backward(
    integers: Tensor,
    scale: Tensor,
    projection: ProjectionMap,
    x: Tensor,
    x_scale: Tensor,
    dy: Tensor,
    levels: int | None,
    out: Tensor | None = None,
) -> tuple[WeightGradient, Tensor | None]:
    """Gradients of y = x * x_scale @ (integers * scale).T from dy [M, N]: with respect to the
    checkpoint's weights [N, K] (`ProjectionMap`: the input taken back and quantized per row,
    dy taken back and quantized per output channel, times that row's scale; the integers into
    `out` if given), and to the input [M, K] (dy times the weight scale, quantized per row to
    `levels`, times the integers; None where `levels` is: nothing below learns)."""
    if dy.shape[0] * CHANNEL_LEVELS * INPUT_LEVELS >= 2**53:
        raise ValueError(f"{dy.shape[0]} positions are too many for one exact weight gradient")
    inputs, inputs_scale = quantize(projection.inputs_back(x.double() * x_scale.double()), INPUT_LEVELS)
    g = projection.outputs_back(dy) * inputs_scale.double()
    g, g_scale = quantize(g, CHANNEL_LEVELS, dim=0, out=g)  # in place: the head's is [tokens, vocab]
    weight_grad = WeightGradient(_product(g.T, inputs, out), g_scale.double().reshape(-1, 1))
    if levels is None:
        return weight_grad, None
    v, v_scale = quantize(dy * scale.double(), levels)
    return weight_grad, _product(v, integers) * v_scale


def logits_gradient(logits: Tensor, targets: Tensor) -> Tensor:
    """The code length's gradient (nats) over float32 logits [M, V] of targets [M]: q - [y = x],
    q the softmax weights in fixed point over 2**PROBABILITY_BITS divided by their exact sum;
    0 where the target is -1 (a row past its end). float64."""
    if logits.is_cpu and (fused := arithmetic.kernels()):
        return fused.logits_gradient(logits, targets, 2.0**PROBABILITY_BITS, arithmetic.LOG2E)
    fixed = torch.round(arithmetic.softmax_weights(logits).double() * 2.0**PROBABILITY_BITS)
    learned = targets >= 0
    dlogits = fixed / fixed.sum(-1, keepdim=True) * learned[:, None]
    dlogits[learned.nonzero()[:, 0], targets[learned]] -= 1.0
    return dlogits


def norm_backward(x: Tensor, h: Tensor, h_scale: Tensor, dn: Tensor) -> Tensor:
    """Gradient of RMSNorm's input x from that of its output n = x / rms(x) ≈ h * h_scale (the
    forward's integers): (dn - n * mean(dn * n)) / rms(x), the mean over integers."""
    d, d_scale = quantize(dn, GRADIENT_LEVELS)
    mean = _integer_sum(d, h) * (d_scale * h_scale.double()) / x.shape[-1]
    inverse_rms = h_scale.double() / quantize(x, arithmetic.ACTIVATION_LEVELS)[1].double()
    return (dn - h.double() * h_scale.double() * mean) * inverse_rms


def silu_mul_backward(gate: Tensor, up: Tensor, da: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of gate and up from that of a = silu(gate) * up, sigmoid from `arithmetic.exp2_neg`."""
    t = arithmetic.exp2_neg(gate.abs() * arithmetic.LOG2E).double()
    sigmoid = torch.where(gate >= 0, 1.0, t) / (1.0 + t)
    gate = gate.double()
    silu_grad = sigmoid * (1.0 + gate * (1.0 - sigmoid))
    return da * up.double() * silu_grad, da * (gate * sigmoid)


def unrotary(dy: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Gradient of x from that of y = `arithmetic.rotary`(x): the rotation back, by -angle."""
    return arithmetic.rotary(dy, cos.double(), -sin.double())


def unhadamard(dy: Tensor) -> Tensor:
    """Gradient of x from that of y = x @ H (`arithmetic.hadamard`): dy @ H.T, over integers."""
    d, d_scale = quantize(dy, FINE_LEVELS)
    return arithmetic.hadamard(d, transpose=True) * d_scale


def attention_backward(
    t: BlockTape, o: Tensor, o_scale: Tensor, do: Tensor, length: int
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Gradients of the rotated queries (and of the sink queries, if any), of the last `length`
    keys (rotated) and of their values, from that of attention's output do; do, o (the
    forward's integer output) and o_scale in attention's layout [rows, kv_heads, queries, ...]."""
    k, v = t.keys.double(), t.values.double()
    scores = _product(t.q, k.transpose(-1, -2))
    if t.sink_q is not None:
        scores[..., : t.sinks] = _product(t.sink_q, k[..., : t.sinks, :].transpose(-1, -2))
    d, d_scale = quantize(do, GRADIENT_LEVELS)
    dp = _product(d, v.transpose(-1, -2))
    dp_mean = _integer_sum(d, o) * (d_scale * o_scale.double())  # do . o = sum_j p_j dp_j
    p, ds, a, a_scale = softmax_backward(t, scores, dp, d_scale, dp_mean)
    a_scale = a_scale / arithmetic.LOG2E  # key scales hold log2(e) / sqrt(head_dim)
    sink_dq = None
    if t.sink_q is not None:
        sink_dq = _product(a[..., : t.sinks], k[..., : t.sinks, :]) * a_scale
        a[..., : t.sinks] = 0
    dq = _product(a, k) * a_scale
    new = slice(scores.shape[-1] - length, scores.shape[-1])  # the segment's own keys
    b, b_scale = quantize(ds[..., new] * t.q_scale.double(), FINE_LEVELS, dim=-2)
    dk = _product(b.transpose(-1, -2), t.q) * (b_scale.transpose(-1, -2) / math.sqrt(t.q.shape[-1]))
    c, c_scale = quantize(p[..., new] * d_scale, FINE_LEVELS, dim=-2)
    dv = _product(c.transpose(-1, -2), d) * c_scale.transpose(-1, -2)
    return dq, sink_dq, dk, dv


def softmax_backward(
    t: BlockTape, scores: Tensor, dp: Tensor, d_scale: Tensor, dp_mean: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """From the integer products q . k (`scores`) and do . v (`dp`, times d_scale and the values'
    scales): the probabilities p, recomputed from the scores as fixed point; the scores' gradient
    ds = p * (dp - dp_mean), in natural units; and ds times the keys' scales quantized per row.
    The kernels write p and ds over scores and dp, in one pass instead of a dozen."""
    if scores.is_cpu and (fused := arithmetic.kernels()):
        scales, mask = (t.key_scales, t.q_scale, t.value_scales, d_scale, dp_mean), (t.positions, t.window, t.sinks)
        return scores, dp, *fused.softmax_backward(scores, dp, *scales, *mask, FINE_LEVELS, arithmetic.TINY)
    scores = scores * t.key_scales.double() * t.q_scale.double()  # log2 units
    keys = torch.arange(scores.shape[-1], device=scores.device)
    positions = t.positions[:, None]
    mask = (keys > positions) | ((keys <= positions - t.window) & (keys >= t.sinks))
    scores = scores.masked_fill(mask, -torch.inf)
    e = arithmetic.exp2_neg((scores.amax(-1, keepdim=True) - scores).float())
    fixed = torch.round(e.double() * 2.0**20)
    p = fixed / fixed.sum(-1, keepdim=True)  # exact sums of integers
    ds = p * (dp * d_scale * t.value_scales.double() - dp_mean)
    return p, ds, *quantize(ds * t.key_scales.double(), FINE_LEVELS)


def rms_step(grad: WeightGradient, mean_square: Tensor, master: Tensor, decayed: float) -> None:
    """RMSprop's step, in place on float64 tensors: the running mean square of the gradient, and
    the master weights moved by RATE times the gradient over its RMS (bias-corrected: `decayed`
    is DECAY**steps). The RMS in float32, by a correctly rounded square root."""
    unbias = 1.0 - decayed
    if fused := arithmetic.kernels():
        args = (DECAY, 1.0 - DECAY, unbias, TINY_SQUARE, EPSILON, RATE)
        return fused.rms_step(grad.integers, grad.scale, mean_square, master, *args)
    g = grad.integers * grad.scale
    mean_square.copy_(mean_square * DECAY + g * g * (1.0 - DECAY))
    unbiased = torch.clamp((mean_square / unbias).float(), min=TINY_SQUARE)
    master.copy_(master - g / (arithmetic.sqrt(unbiased).double() + EPSILON) * RATE)


@dataclass
class Moments:
    """One projection's learning state, in the checkpoint's coordinates: float64 master weights
    and their gradients' running mean square; and two buffers every step reuses (a fresh tensor
    of this size costs as much in page faults as the arithmetic on it): the weight gradient's
    integers, and the prepared weights, quantized in place (float64 integers, which the next
    backward multiplies)."""

    master: Tensor
    mean_square: Tensor
    gradient: Tensor
    integers: Tensor


class Learner:
    """The weights a batch learns, from the prepared model's: `learn` after each segment; `reset`
    before a new batch (batches code independently). Steps are taken in the checkpoint's
    coordinates (`ProjectionMap`): RMSprop there, as in the float simulation; in the prepared
    ones, rotated and with the norms' gains folded in, it saved a tenth as much."""

    def __init__(
        self, model: ExactLlama, maps: dict[tuple[int, str], ProjectionMap], blocks: int | None = None
    ) -> None:
        """`blocks`: how many blocks learn besides the head, from the top (None: all); the
        backward stops below them. `model`'s projections are not touched: the learner steps its
        own `model`, a copy that shares them until they change."""
        self.first = 0 if blocks is None else max(0, len(model.blocks) - blocks)  # the lowest block learning
        maps = {key: m for key, m in maps.items() if key == HEAD or key[0] >= self.first}
        self.model, self.maps = copy.copy(model), maps
        self.model.blocks = [copy.copy(block) for block in model.blocks]
        self.prepared = {key: self._layer(key) for key in maps}
        self.reset()

    def _layer(self, key: tuple[int, str]) -> ExactLinear:
        i, name = key
        return self.model.head if key == HEAD else getattr(self.model.blocks[i], name)

    def _set_layer(self, key: tuple[int, str], layer: ExactLinear) -> None:
        i, name = key
        if key == HEAD:
            self.model.head = layer
        else:
            setattr(self.model.blocks[i], name, layer)

    def tape(self) -> Tape:
        """A tape for the forward of a segment to learn from: the blocks that learn."""
        return Tape(first=self.first)

    def reset(self) -> None:
        """Back to the prepared weights."""
        for key, layer in self.prepared.items():
            self._set_layer(key, layer)
        self.moments: dict[tuple[int, str], Moments] = {}
        self.decayed = 1.0  # DECAY**steps, by multiplication (pow is libm's, not correctly rounded everywhere)

    def learn(self, tape: Tape, logits: Tensor, targets: Tensor) -> None:
        """One step from a segment: the forward's tape and logits [rows, T, vocab] (positions
        whose next tokens are targets [rows, T]; -1 where a row has none)."""
        with torch.inference_mode():
            grads = self.gradients(tape, logits, targets)
            self.decayed = self.decayed * DECAY
            for key, grad in grads.items():
                projection = self.maps[key]
                moments = self.moments.get(key)
                if moments is None:
                    weight = projection.weight
                    moments = Moments(weight.clone(), torch.zeros_like(weight), grad.integers, torch.empty_like(weight))
                    self.moments[key] = moments
                rms_step(grad, moments.mean_square, moments.master, self.decayed)
                device = self._layer(key).int_weight.device
                prepared = projection.prepare(moments.master, out=moments.integers)
                integers, scale = ExactLinear.quantized(prepared, out=moments.integers)
                self._set_layer(key, ExactLinear(integers, scale).to(device))

    def _backward(
        self, key: tuple[int, str], x: Tensor, x_scale: Tensor, dy: Tensor, levels: int | None
    ) -> tuple[WeightGradient, Tensor | None]:
        layer, moments = self._layer(key), self.moments.get(key)
        integers, out = (layer.int_weight, None) if moments is None else (moments.integers, moments.gradient)
        return linear_backward(integers, layer.scale, self.maps[key], x, x_scale, dy, levels, out)

    def gradients(self, tape: Tape, logits: Tensor, targets: Tensor) -> dict[tuple[int, str], WeightGradient]:
        """The code length's gradient (in nats, summed over the segment) for every learning
        projection's checkpoint weights [N, K], keyed (block, field), the head as (-1, "head");
        `tape` from `self.tape()`."""
        model, c = self.model, self.model.config
        rows, length = targets.shape
        flat = rows * length
        dlogits = logits_gradient(logits.reshape(flat, -1), targets.reshape(-1))
        grads = {}
        x, h, h_scale = (t.reshape(flat, -1) for t in tape.final)
        blocks = len(model.blocks)
        grads[HEAD], dn = self._backward(HEAD, h, h_scale, dlogits, LOGIT_LEVELS if self.first < blocks else None)
        if dn is None:
            return grads
        dx = norm_backward(x, h, h_scale, dn)
        cos, sin = model.cos[tape.start : tape.start + length, None], model.sin[tape.start : tape.start + length, None]
        for i in reversed(range(self.first, blocks)):
            t = tape.blocks[i - tape.first]
            # the MLP: x + down(H(silu(gate) * up)), gate and up from RMSNorm(x)
            grads[i, "down"], da = self._backward((i, "down"), _flat(t.a), _flat(t.a_scale), dx, GRADIENT_LEVELS)
            dgate, dup = silu_mul_backward(_flat(t.gate), _flat(t.up), unhadamard(da))
            dh = torch.cat([dgate, dup], -1)
            grads[i, "gate_up"], dn = self._backward(
                (i, "gate_up"), _flat(t.h2), _flat(t.h2_scale), dh, GRADIENT_LEVELS
            )
            dx = dx + norm_backward(_flat(t.x_mid), _flat(t.h2), _flat(t.h2_scale), dn)
            # attention: x + out(attention(q, k, v)), q, k, v from RMSNorm(x)
            grads[i, "out"], do = self._backward((i, "out"), _flat(t.o), _flat(t.o_scale), dx, GRADIENT_LEVELS)
            do, o = (_by_head(x.view(rows, length, c.heads, c.head_dim), c.kv_heads) for x in (do, t.o))
            o_scale = _by_head(t.o_scale[:, :, None].expand(rows, length, c.heads, 1), c.kv_heads)
            dq, sink_dq, dk, dv = attention_backward(t, o, o_scale, do, length)
            dq = unrotary(_by_position(dq, c.heads, length), cos, sin)
            if sink_dq is not None:
                sink_cos, sink_sin = model.cos[tape.pinned, None], model.sin[tape.pinned, None]
                dq = dq + unrotary(_by_position(sink_dq, c.heads, length), sink_cos, sink_sin)
            dk = unrotary(dk.transpose(1, 2), cos, sin)
            dqkv = torch.cat([dq, dk, dv.transpose(1, 2)], 2).reshape(flat, -1)
            below = GRADIENT_LEVELS if i > self.first else None
            grads[i, "qkv"], dn = self._backward((i, "qkv"), _flat(t.h), _flat(t.h_scale), dqkv, below)
            if dn is not None:
                dx = dx + norm_backward(_flat(t.x), _flat(t.h), _flat(t.h_scale), dn)
        return grads


def _flat(t: Tensor) -> Tensor:
    """[rows, T, ...] -> [rows * T, ...]"""
    return t.reshape(-1, *t.shape[2:]) if t.dim() > 2 else t.reshape(-1, 1)


def _by_head(x: Tensor, kv_heads: int) -> Tensor:
    """[rows, T, heads, D] -> attention's layout [rows, kv_heads, groups * T, D]."""
    rows, length, heads, dim = x.shape
    return x.permute(0, 2, 1, 3).reshape(rows, kv_heads, heads // kv_heads * length, dim)


def _by_position(x: Tensor, heads: int, length: int) -> Tensor:
    """Attention's layout [rows, kv_heads, groups * T, D] -> [rows, T, heads, D]."""
    return x.reshape(x.shape[0], heads, length, x.shape[-1]).transpose(1, 2)
