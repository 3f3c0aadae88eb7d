"""Arithmetic whose results are the same bits on every CPU, GPU, thread count and batch shape.

Floating-point kernels sum in orders that depend on the instruction set, the blocking, the
thread count and the batch shape, and torch's exp/sin/cos are vectorised approximations that
differ between instruction sets; a range decoder needs the encoder's probabilities to the
last bit. Everything the exact models compute is built from two kinds of operation:

- Reductions over integers. A float32 sum of integers is exact, in any order, while every
  partial sum stays below 2**24: products of `levels`-bounded integers are summed only where
  K * max|a| * max|b| < 2**24 (K is split otherwise), integer sums that may pass 2**24 are
  taken in float64 (exact below 2**53), and max is exact in any order. The CPU kernels take
  the same sums in int32 from int16 products: the same integers.
- Elementwise IEEE operations (+ - * /, round, floor), each one torch op in a fixed order,
  which are correctly rounded everywhere; sqrt is `sqrt` below (torch's is not, on every
  CPU); exp and sin/cos are polynomials written with them, never torch's. No op may fuse a
  multiply and an add (no addcmul, no torch.compile).

The model code (`llama.py`, `gemma3.py`) is written in these terms and nothing else.
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from functools import cache
from types import ModuleType

import torch

from . import build

EXACT_SUM = 2**24  # float32 represents every integer up to this
ACTIVATION_LEVELS = 127  # linear inputs are quantized per row to integers in [-127, 127]
TINY = 2.0**-100  # smallest quantization scale: keeps an all-zero row finite
LOG2E = 1.4426950408889634
GELU_SCALE = 1.5957691216057308  # 2 * sqrt(2 / pi)
NO_WINDOW = 2**62  # attention without a sliding window
CACHED_QUERIES = 16  # at most this many queries per key/value head read an integer cache directly
MAX_PIECE = (EXACT_SUM - 1) // (ACTIVATION_LEVELS * 127)  # longest dot product kept with >= 127 weight levels

# 2**-f on [0, 1]: degree 5, least squares at Chebyshev nodes, relative error 2.7e-7, constant
# term 1 so that 2**-0 is exactly 1. The float32 literals are the definition, not the fit.
EXP2_POLY = (
    1.0, -0.6931435465812683, 0.2401788979768753, -0.05529404059052467, 0.009202176705002785, -0.0009435108513571322
)  # fmt: skip


def weight_levels(k: int) -> int:
    """The largest weight integer for a K-long dot product with activations of ±127 that no
    summation order can round: K * 127 * levels < 2**24 (K = 576: 229 levels, 8.8 bits)."""
    return (EXACT_SUM - 1) // (k * ACTIVATION_LEVELS)


def quantize(
    x: torch.Tensor, levels: int, dim: int = -1, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integers q in [-levels, levels] (x's dtype) and scales s with x ≈ q * s, one scale per
    slice along `dim` taken from max|x| (exact: max does not depend on the order); q written
    into `out` if given (contiguous, x's shape; x itself quantizes in place)."""
    if dim in (-1, x.dim() - 1) and x.is_cpu and x.dtype in (torch.float32, torch.float64) and (fused := kernels()):
        return tuple(fused.quantize(x, levels, TINY, -1.0, out))
    if dim == 0 and x.dim() == 2 and x.is_cpu and x.dtype == torch.float64 and (fused := kernels()):
        return tuple(fused.quantize_columns(x, levels, TINY, torch.empty_like(x) if out is None else out))
    scale = torch.clamp(x.abs().amax(dim, keepdim=True), min=TINY) / levels
    return torch.round(x / scale, out=out), scale


def quantize_normed(x: torch.Tensor, eps: float, levels: int = ACTIVATION_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm (without gain: the gain is folded into the next weights) and quantization in one:
    q * s ≈ x / rms(x). The sum of squares is taken over the integers q, so it is exact (in
    float64 where it may pass 2**24)."""
    if fused := _fused(x):
        return tuple(fused.quantize(x, levels, TINY, eps, None))
    q, scale = quantize(x, levels)
    if x.shape[-1] * levels**2 < EXACT_SUM:
        squares = (q * q).sum(-1, keepdim=True)
    else:
        squares = (q.double() * q.double()).sum(-1, keepdim=True)
    mean = squares / x.shape[-1]
    return q, 1.0 / sqrt((mean + eps / (scale * scale)).float())


def sqrt(x: torch.Tensor) -> torch.Tensor:
    """The correctly rounded square root of float32 x >= 0. torch.sqrt is not correctly rounded
    everywhere: MKL's vector math gave a neighbour of the correct float for 0.7% of float32
    inputs on an Intel Xeon (AVX-512; from about 1000 elements on, none in 100), other bits
    again under MKL_CBWR settings. Its result y is moved to the neighbour on the side where x
    lies beyond the midpoint: midpoints have 25 significant bits, so their squares are exact in
    float64 (and never equal x: no ties)."""
    y = torch.sqrt(x)
    up, down = torch.nextafter(y, torch.full_like(y, math.inf)), torch.nextafter(y, torch.zeros_like(y))
    wide, square = y.double(), x.double()
    above, below = (wide + up.double()) / 2, (wide + down.double()) / 2
    y = torch.where(square > above * above, up, y)
    return torch.where(square < below * below, down, y)


class ExactLinear:
    """y = x @ W.T with W as integers per output channel and x as integers per row, scaled
    after the exact integer product. On the CPU the kernels take int16 products in int32
    (1.8x oneDNN's float32 at 256 rows, 2.5x at 26 here); elsewhere (a GPU, no compiler) each
    K-piece is a float32 product whose every partial sum stays an integer below 2**24."""

    def __init__(self, int_weight: torch.Tensor, scale: torch.Tensor) -> None:
        """Integer weights [N, K] (any dtype) and their per-channel scales [N]."""
        k = int_weight.shape[1]
        pieces = -(-k // MAX_PIECE)
        self.bounds = [(k * i // pieces, k * (i + 1) // pieces) for i in range(pieces)]
        self.int_weight, self.scale = int_weight.to(torch.int16), scale.float()  # |w| < 2**15 for K >= 5
        self.to(torch.device("cpu"))

    @staticmethod
    def quantized(weight: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Float64 weights [N, K] (already rotated and gain-folded) as integers per output channel,
        as many levels as the longest K-piece allows (float64, into `out` if given), and their
        scales [N]."""
        longest = -(-weight.shape[1] // -(-weight.shape[1] // MAX_PIECE))
        int_weight, scale = quantize(weight, weight_levels(longest), out=out)
        return int_weight, scale.view(-1)

    @classmethod
    def of(cls, weight: torch.Tensor) -> ExactLinear:
        return cls(*cls.quantized(weight))

    def to(self, device: torch.device) -> ExactLinear:
        if hasattr(self, "pieces") and self.int_weight.device == device:  # packed for this device already
            return self
        self.int_weight, self.scale = self.int_weight.to(device), self.scale.to(device)
        self.kernels = kernels() if device.type == "cpu" else None
        if self.kernels:
            self.packed, self.pieces = self.kernels.pack_weight(self.int_weight), []
        else:
            self.pieces = [self.int_weight[:, a:b].float().contiguous() for a, b in self.bounds]
        return self

    def __call__(self, q: torch.Tensor, row_scale: torch.Tensor) -> torch.Tensor:
        """q [..., K] integers (float32), row_scale [..., 1] -> float32 [..., N]."""
        if self.kernels:
            return self.kernels.linear(q, self.packed, self.scale.shape[0], self.scale, row_scale)
        if len(self.pieces) == 1:
            acc = torch.nn.functional.linear(q, self.pieces[0])
        else:  # each piece exact; their sum may pass 2**24, so it is taken in float64
            pieces = zip(self.bounds, self.pieces, strict=True)
            acc = sum(torch.nn.functional.linear(q[..., a:b], w).double() for (a, b), w in pieces).float()
        return acc * self.scale * row_scale


KERNEL_DEFINES = {"LLMZIP_EXP2_POLY": ",".join(f"{float.hex(c)}f" for c in EXP2_POLY)}  # the polynomial, exactly


@cache
def kernels() -> ModuleType | None:
    """The fused CPU kernels (csrc/: the same bits as the torch code here, in one pass over
    memory), compiled on first use (about a minute, then cached: build.py), or None where they
    cannot be built or LLMZIP_KERNELS=0: then the torch code here runs, with the same results."""
    return build.load(KERNEL_DEFINES)


def _fused(*tensors: torch.Tensor) -> ModuleType | None:
    """The kernels, if they apply: float32 CPU tensors."""
    if all([t.is_cpu and t.dtype is torch.float32 for t in tensors]):  # a list: hundreds of calls a step
        return kernels()
    return None


def exp2_neg(d: torch.Tensor) -> torch.Tensor:
    """2**-d for d >= 0 (inf allowed), float32; exactly 0 from d = 127 on, exactly 1 at d = 0."""
    d = torch.clamp(d, max=127.0)
    n = torch.floor(d)
    f = d - n  # exact
    p = torch.full_like(f, EXP2_POLY[-1])
    for c in EXP2_POLY[-2::-1]:
        p = p * f + c  # two ops, each rounded: no fused multiply-add
    power = torch.bitwise_left_shift(127 - n.to(torch.int32), 23).view(torch.float32)  # 2**-n; n = 127 -> 0
    return p * power


def silu_mul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x) * y, with exp from `exp2_neg`: t = e**-|x|, sigmoid = 1/(1+t) or t/(1+t)."""
    if fused := _fused(x, y):
        return fused.silu_mul(x, y, LOG2E)
    t = exp2_neg(x.abs() * LOG2E)
    numerator = torch.where(x >= 0, 1.0, t)
    return x * (numerator / (1.0 + t)) * y


def gelu_tanh_mul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """gelu(x) * y with the tanh approximation (Gemma's gelu_pytorch_tanh): gelu(x) = x * sigmoid(z)
    with z = 2 * sqrt(2/pi) * (x + 0.044715 x**3), and sigmoid as in `silu_mul`."""
    z = x * x
    z = z * x
    z = z * 0.044715
    z = (x + z) * GELU_SCALE
    t = exp2_neg(z.abs() * LOG2E)
    numerator = torch.where(z >= 0, 1.0, t)
    return x * (numerator / (1.0 + t)) * y


def softmax_weights(logits: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Unnormalized probabilities e**(z - max z), the largest exactly 1: float32 [rows, n], or
    written into the first n columns of `out` (float64 [rows, >= n], what the coder reads)."""
    if out is not None and out.device.type == "cpu" and (fused := _fused(logits)):
        fused.softmax_weights_into(logits, out, LOG2E)
        return out
    top = logits.amax(-1, keepdim=True)
    weights = exp2_neg((top - logits) * LOG2E)
    if out is None:
        return weights
    out[:, : weights.shape[-1]] = weights
    return out


def attention(
    q: torch.Tensor,
    q_scale: torch.Tensor,
    k: torch.Tensor,
    k_scale: torch.Tensor,
    v: torch.Tensor,
    v_scale: torch.Tensor,
    positions: torch.Tensor,
    window: int | None = None,
    sinks: int = 0,
    sink_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(q·k) · v over integer q, k, v, with scores in log2 units (k_scale includes
    log2(e) times the attention's scaling). Shapes: q [..., Q, D], q_scale [..., Q, 1], k and v
    [..., T, D], k_scale and v_scale [..., 1, T]; positions [Q] (int64): query i attends keys
    0..positions[i], or only the last `window` of them and the first `sinks` (StreamingLLM's
    attention sinks, Xiao et al. 2023: without them a model that lost its first keys fails).
    `sink_q` (q's shape and scales) scores the sinks instead of q: the queries rotated to a
    position where the sinks sit right before the window (StreamingLLM's positions in the cache).

    The weights p_j * v_scale_j are rounded to integers W_j that sum to about 2**16, so
    sum_j W_j * v_j (|v| <= 127) stays below 2**24: an exact product. The softmax's
    normalizer and the weights' sum are integer sums too. A key outside the mask gets weight
    exactly 0, so a query sees the same numbers whether later keys exist (teacher forcing) or
    not (one step with a KV cache).

    k and v may be a cache's integer tensors (int8 or int16 keys, int8 values): a few queries (a
    decoding step) then read them directly in the fused kernel, at most a quarter of float32's
    memory traffic."""
    window = window or NO_WINDOW
    fused = _fused(q, q_scale, k_scale, v_scale)
    integer_keys = k.dtype in (torch.int8, torch.int16)
    if fused and integer_keys and v.dtype == torch.int8 and q.shape[-2] <= CACHED_QUERIES:
        flat = [t.reshape(-1, *t.shape[-2:]) for t in (q, q_scale, k, k_scale, v, v_scale)]
        sink_flat = torch.empty(0) if sink_q is None else sink_q.reshape(flat[0].shape)
        return fused.attention_cached(*flat, positions, window, sinks, sink_flat).view(q.shape)
    k, v = k.float(), v.float()
    scores = q @ k.transpose(-1, -2)  # exact integer dot products
    if sink_q is not None:
        scores[..., :sinks] = sink_q @ k[..., :sinks, :].transpose(-1, -2)
    if fused:
        shape = scores.shape
        flat = [t.reshape(-1, *t.shape[-2:]) for t in (scores, k_scale, q_scale, v_scale)]
        weights, factor = fused.attention_weights(*flat, positions, window, sinks)
        return (weights.view(shape) @ v) * factor.view(*shape[:-1], 1)
    scores = scores * k_scale
    keys = torch.arange(scores.shape[-1], device=scores.device)
    mask = (keys > positions[:, None]) | ((keys <= positions[:, None] - window) & (keys >= sinks))
    scores = scores.masked_fill(mask, -math.inf)
    e = exp2_neg((scores.amax(-1, keepdim=True) - scores) * q_scale)
    ev = e * v_scale
    top = ev.amax(-1, keepdim=True)
    fixed = torch.round(ev * (2.0**20 / top))  # integers <= 2**20
    fixed_sum = fixed.sum(-1, keepdim=True, dtype=torch.float64)  # exact
    weights = torch.round(fixed * (2.0**16 / fixed_sum).float())
    normalizer = torch.round(e * 2.0**20).sum(-1, keepdim=True, dtype=torch.float64)  # exact
    factor = (fixed_sum * top.double() / (2.0**16 * normalizer)).float()
    return (weights @ v) * factor


@cache
def hadamard_factors(n: int) -> tuple[tuple[torch.Tensor, ...], int]:
    """A Hadamard matrix of order n (H Hᵀ = n I) as the Kronecker product of ±1 Paley factors
    of order q + 1 (q prime, q = 3 mod 4; float64), taken until a power of two m is left, and
    Sylvester's matrix of order m: (factors, m). 576 = 12·12·4, 1536 = 12·128, 640 = 20·32."""
    factors = []
    while n & (n - 1):
        q = next((q for q in _PALEY_PRIMES if n % (q + 1) == 0), None)
        if q is None:
            raise ValueError(f"no Hadamard matrix of order {n} built here")
        factors.append(_paley(q))
        n //= q + 1
    return tuple(factors), n


_PALEY_PRIMES = (11, 19, 23, 31, 43, 47, 59, 67, 71, 79, 83)


def _paley(q: int) -> torch.Tensor:
    """Paley construction I, order q + 1: I + [[0, 1ᵀ], [-1, Q]], Q the Jacobsthal matrix of GF(q)."""
    squares = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0] + [1 if a in squares else -1 for a in range(1, q)], dtype=torch.float64)
    i = torch.arange(q)
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:], s[1:, 0] = 1, -1
    s[1:, 1:] = chi[(i[None, :] - i[:, None]) % q]
    return s + torch.eye(q + 1, dtype=torch.float64)


def hadamard(x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """x @ H (or x @ H.T) over the last axis (H of `hadamard_factors`), for integer-valued x:
    every sum is of integers, exact while n * max|x| stays below 2**24 (float32) or 2**53 (float64)."""
    factors, sylvester = hadamard_factors(x.shape[-1])
    if transpose:  # the Kronecker product of the factors' transposes; Sylvester's is symmetric
        factors = tuple(f.T for f in factors)
    if x.is_cpu and x.dtype in (torch.float32, torch.float64) and (fused := kernels()):
        return fused.hadamard(x, [f.contiguous() for f in factors], sylvester)
    shape, after = x.shape, x.shape[-1]
    for f in factors:  # each contracts the middle axis of [before, order, after]
        after //= f.shape[0]
        x = torch.matmul(f.to(x.dtype).T, x.reshape(-1, f.shape[0], after))
    half = sylvester // 2
    while half:  # Sylvester's H_2m = [[H_m, H_m], [H_m, -H_m]]: sums and differences of halves
        pairs = x.reshape(-1, 2, half)
        x = torch.stack([pairs[:, 0] + pairs[:, 1], pairs[:, 0] - pairs[:, 1]], 1)
        half //= 2
    return x.reshape(shape)


def quantize_rotated(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit integers r and row scales s with r * s ≈ x @ H: x quantized to `levels` first, so
    that `hadamard` rotates integers exactly."""
    factors, sylvester = hadamard_factors(x.shape[-1])
    if fused := _fused(x):
        return tuple(fused.quantize_rotated(x, levels, ACTIVATION_LEVELS, list(factors), sylvester, TINY))
    q, scale = quantize(x, levels)
    r, r_scale = quantize(hadamard(q), ACTIVATION_LEVELS)
    return r, r_scale * scale


def rotate_weights(
    w: torch.Tensor, scale: float, transpose: bool = False, out: torch.Tensor | None = None, dim: int = -1
) -> torch.Tensor:
    """(w @ H) * scale (or w @ H.T) over the last axis (dim=0: over the first axis of a matrix,
    H.T @ w), in float64, for any float weights: w is first put on a 40-bit fixed-point grid (one
    power-of-two step for the whole matrix), so the product is exact and the only roundings are
    that grid and the final scaling. Written into `out` if given (contiguous float64, w's shape;
    w itself rotates in place)."""
    if dim not in (-1, w.dim() - 1) and not (dim == 0 and w.dim() == 2):
        raise ValueError("rotate_weights turns the last axis, or the first of a matrix")
    columns = dim == 0 and w.dim() == 2
    w = w.double()
    low, high = torch.aminmax(w)  # max|w| without a temporary as large as w
    step = 2.0 ** (math.frexp(max(-float(low), float(high)))[1] - 40)
    if w.is_cpu and (fused := kernels()):
        factors, sylvester = hadamard_factors(w.shape[0 if columns else -1])
        factors = [(f.T if transpose else f).contiguous() for f in factors]
        out = torch.empty_like(w, memory_format=torch.contiguous_format) if out is None else out
        return fused.rotate_weights(w, out, step, step * scale, factors, sylvester, columns)
    grid = torch.round(w / step)
    rotated = (hadamard(grid.T, transpose).T if columns else hadamard(grid, transpose)) * (step * scale)
    return rotated if out is None else out.copy_(rotated)


def rotary_table(positions: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [positions, head_dim] (float32) of t * theta**(-2i/head_dim), as Hugging
    Face's rotate_half convention pairs them, from correctly rounded frequencies (Python's
    decimal) and llmzip's own float64 sine and cosine."""
    with localcontext() as ctx:
        ctx.prec = 40
        log_theta = Decimal(theta).ln()
        freqs = [float((-(2 * i) * log_theta / head_dim).exp()) for i in range(head_dim // 2)]
    angles = torch.arange(positions, dtype=torch.float64)[:, None] * torch.tensor(freqs, dtype=torch.float64)
    cos, sin = _cos_sin(angles)
    return cos.repeat(1, 2).float(), sin.repeat(1, 2).float()


_HALF_PI = (1.5707963267341256, 6.077100506303966e-11, 2.0222662487959506e-21)  # pi/2 in 33 + 33 + 53 bits
_SIN = [(-1) ** k / math.factorial(2 * k + 1) for k in range(10)]  # Taylor, |r| <= pi/4: error < 1e-20
_COS = [(-1) ** k / math.factorial(2 * k) for k in range(10)]


def _cos_sin(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of float64 angles 0 <= a < 2**20: Cody-Waite reduction by pi/2, Taylor."""
    k = torch.round(a * (2 / math.pi))
    r = a - k * _HALF_PI[0]  # k * part is exact: each part has at most 33 significant bits
    r = r - k * _HALF_PI[1]
    r = r - k * _HALF_PI[2]
    r2 = r * r
    s, c = torch.full_like(r, _SIN[-1]), torch.full_like(r, _COS[-1])
    for sc, cc in zip(_SIN[-2::-1], _COS[-2::-1], strict=True):
        s, c = s * r2 + sc, c * r2 + cc
    s = s * r
    quadrant = torch.remainder(k, 4)
    cos = torch.where(quadrant == 0, c, torch.where(quadrant == 1, -s, torch.where(quadrant == 2, -c, s)))
    sin = torch.where(quadrant == 0, s, torch.where(quadrant == 1, c, torch.where(quadrant == 2, -s, -c)))
    return cos, sin


def rotary_quantize(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, levels: int, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize` of `rotary`(x) with heads before positions, as attention reads them: x [rows, T,
    heads, head_dim] -> integers [rows, heads, T, head_dim] and scales [rows, heads, T, 1]. With
    `scale` given (another rotation's, of the same x), the integers are round(rotary(x) / scale)
    clipped to [-levels, levels]: rotations keep each pair's norm, so they stay within sqrt(2)
    times the other rotation's levels."""
    if x.stride(-1) == 1 and (fused := _fused(x, cos, sin)):
        given = torch.empty(0) if scale is None else scale.contiguous()
        return tuple(fused.rotary_quantize(x, cos, sin, levels, TINY, given))
    rotated = rotary(x, cos, sin).transpose(1, 2)
    if scale is None:
        return quantize(rotated, levels)
    return torch.clamp(torch.round(rotated / scale), -levels, levels), scale


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Hugging Face's rotate_half rotary embedding of x [rows, T, heads, head_dim] with tables
    [T, 1, head_dim] from `rotary_table`."""
    half = x.shape[-1] // 2
    turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + turned * sin
