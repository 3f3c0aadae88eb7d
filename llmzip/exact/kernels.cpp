// Fused CPU versions of arithmetic.py's pipelines and bias.py's: the same IEEE operations in the
// same order, and the same integer sums (int32 here, float32 below 2**24 there), so the same
// bits, in one pass over memory instead of one pass per torch op. Compiled with -ffp-contract=off
// (no fused multiply-add), without -ffast-math and with OpenMP (at::parallel_for); explicit
// fused multiply-adds appear only where every product and sum is an integer below 2**24, exact
// either way. The Python code is the definition and the fallback, and tests/test_exact.py and
// tests/test_bias.py check that both agree bit for bit.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <vector>

#ifndef LLMZIP_EXP2_POLY
#error "compile through arithmetic.kernels(), which passes the polynomial"
#endif

namespace {

// arithmetic.EXP2_POLY, lowest degree first, passed by arithmetic.py as exact hexadecimal literals.
constexpr float kPoly[] = {LLMZIP_EXP2_POLY};
constexpr int kDegree = sizeof(kPoly) / sizeof(kPoly[0]) - 1;
constexpr int kLanes = 16;  // independent partial maxima, so that max over a row vectorises
constexpr int64_t kChannels = 16;  // output channels of one packed weight block in `linear`
constexpr int64_t kRows = 6;  // rows of one register tile in `linear`: 12 sums, 2 weights, 1 broadcast

inline float exp2_neg(float d) {
  d = std::min(d, 127.0f);
  const float n = std::floor(d);
  const float f = d - n;
  float p = kPoly[kDegree];
  for (int k = kDegree - 1; k >= 0; --k) {
    p = p * f;
    p = p + kPoly[k];
  }
  const int32_t bits = (127 - static_cast<int32_t>(n)) << 23;
  float power;
  std::memcpy(&power, &bits, sizeof power);
  return p * power;
}

// max over x[0..n): exact in any order, so lanes may take it apart.
template <typename T>
inline T row_max(const T* x, int64_t n) {
  T lanes[kLanes];
  for (int l = 0; l < kLanes; ++l) lanes[l] = -std::numeric_limits<T>::infinity();
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] = std::max(lanes[l], x[j + l]);
  T top = -std::numeric_limits<T>::infinity();
  for (int l = 0; l < kLanes; ++l) top = std::max(top, lanes[l]);
  for (; j < n; ++j) top = std::max(top, x[j]);
  return top;
}

// sum of integers x[0..n) below 2**53: exact in any order, so lanes may take it apart.
inline double integer_sum(const double* x, int64_t n) {
  double lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] += x[j + l];
  double sum = 0.0;
  for (int l = 0; l < kLanes; ++l) sum += lanes[l];
  for (; j < n; ++j) sum += x[j];
  return sum;
}

// sum of nearbyint(x[j] * scale): integers, summed exactly in float64 lanes (any order is exact).
inline double rounded_sum(const float* x, int64_t n, float scale) {
  double lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] += std::nearbyint(x[j + l] * scale);
  double sum = 0.0;
  for (int l = 0; l < kLanes; ++l) sum += lanes[l];
  for (; j < n; ++j) sum += std::nearbyint(x[j] * scale);
  return sum;
}

// One row of arithmetic.quantize: scale = max(max|x|, tiny) / levels and q = round(x / scale); returns the scale.
template <typename T>
inline T quantize_row(const T* x, int64_t n, T levels, T tiny, T* q) {
  T lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] = std::max(lanes[l], std::fabs(x[j + l]));
  T top = 0;
  for (int l = 0; l < kLanes; ++l) top = std::max(top, lanes[l]);
  for (; j < n; ++j) top = std::max(top, std::fabs(x[j]));
  const T s = std::max(top, tiny) / levels;
  for (j = 0; j < n; ++j) q[j] = std::nearbyint(x[j] / s);
  return s;
}

// sum of q[j]**2 over integers q: exact in any order, in Sum (float where the sum stays below 2**24).
template <typename Sum>
inline Sum square_sum(const float* q, int64_t n) {
  Sum lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] += static_cast<Sum>(q[j + l]) * static_cast<Sum>(q[j + l]);
  Sum sum = 0;
  for (int l = 0; l < kLanes; ++l) sum += lanes[l];
  for (; j < n; ++j) sum += static_cast<Sum>(q[j]) * static_cast<Sum>(q[j]);
  return sum;
}

// arithmetic.quantize (and with eps >= 0, arithmetic.quantize_normed) over the last axis: q and per row
// the scale, or the norm's factor 1 / sqrt(mean(q**2) + eps / scale**2) in the torch code's
// operations: its divisions by a tensor are a reciprocal and a product (Tensor.__rdiv__), the
// mean is float32 or, where the squares may pass 2**24, float64; std::sqrt is correctly rounded.
// float64 x may be quantized in place: q given as x (contiguous).
std::vector<torch::Tensor> quantize(torch::Tensor x, double levels, double tiny, double eps,
                                    std::optional<torch::Tensor> into) {
  auto xc = x.contiguous();
  const int64_t n = xc.size(-1), rows = xc.numel() / n;
  auto q = into.has_value() ? *into : torch::empty_like(xc);
  TORCH_CHECK(q.is_contiguous() && q.sizes() == xc.sizes() && q.scalar_type() == xc.scalar_type());
  auto sizes = xc.sizes().vec();
  sizes.back() = 1;
  auto scale = torch::empty(sizes, xc.options());
  if (xc.scalar_type() == torch::kDouble) {  // weights being learned: no norm
    TORCH_CHECK(eps < 0);
    const double* in = xc.data_ptr<double>();
    double *qp = q.data_ptr<double>(), *sp = scale.data_ptr<double>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) sp[r] = quantize_row<double>(in + r * n, n, levels, tiny, qp + r * n);
    });
    return {q, scale};
  }
  const float* in = xc.data_ptr<float>();
  float* qp = q.data_ptr<float>();
  float* sp = scale.data_ptr<float>();
  const float level = static_cast<float>(levels), smallest = static_cast<float>(tiny), epsilon = static_cast<float>(eps);
  const bool normed = eps >= 0, wide = static_cast<double>(n) * levels * levels >= 16777216.0;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* out = qp + r * n;
      const float s = quantize_row<float>(in + r * n, n, level, smallest, out);
      if (!normed) {
        sp[r] = s;
        continue;
      }
      const float pull = (1.0f / (s * s)) * epsilon;
      const float total = wide ? static_cast<float>(square_sum<double>(out, n) / static_cast<double>(n) + pull)
                               : square_sum<float>(out, n) / static_cast<float>(n) + pull;
      sp[r] = 1.0f / std::sqrt(total);
    }
  });
  return {q, scale};
}

// arithmetic.rotary_quantize: the rotary embedding of each head's vector x [rows, T, heads, dim] (last
// axis contiguous, any other strides) as the torch code computes it, x * cos + turned * sin with
// each product and the sum rounded to float32, then quantized: q [rows, heads, T, dim] and scales
// [rows, heads, T, 1]; or, with `given` scales of that shape, q = round(rotated / given) clipped
// to [-levels, levels].
std::vector<torch::Tensor> rotary_quantize(torch::Tensor x, torch::Tensor cos, torch::Tensor sin, double levels,
                                           double tiny, torch::Tensor given) {
  auto cc = cos.contiguous(), sc = sin.contiguous();
  const int64_t rows = x.size(0), length = x.size(1), heads = x.size(2), dim = x.size(3), half = dim / 2;
  TORCH_CHECK(x.dim() == 4 && x.stride(3) == 1 && dim % 2 == 0 && dim <= 1024 && cc.numel() == length * dim);
  auto q = torch::empty({rows, heads, length, dim}, x.options());
  auto scale = given.numel() ? given.contiguous() : torch::empty({rows, heads, length, 1}, x.options());
  TORCH_CHECK(scale.numel() == rows * heads * length);
  const bool fixed = given.numel() > 0;
  const float* in = x.data_ptr<float>();
  const float* cp = cc.data_ptr<float>();
  const float* snp = sc.data_ptr<float>();
  float* qp = q.data_ptr<float>();
  float* sp = scale.data_ptr<float>();
  const int64_t row_stride = x.stride(0), position_stride = x.stride(1), head_stride = x.stride(2);
  const float level = static_cast<float>(levels), smallest = static_cast<float>(tiny);
  at::parallel_for(0, rows * heads * length, 16, [&](int64_t begin, int64_t end) {
    float rotated[1024];
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = i / (heads * length), h = i / length % heads, t = i % length;
      const float* v = in + r * row_stride + t * position_stride + h * head_stride;
      const float* c = cp + t * dim;
      const float* s = snp + t * dim;
      for (int64_t d = 0; d < half; ++d) rotated[d] = v[d] * c[d] + -v[d + half] * s[d];
      for (int64_t d = half; d < dim; ++d) rotated[d] = v[d] * c[d] + v[d - half] * s[d];
      if (fixed)
        for (int64_t d = 0; d < dim; ++d)
          qp[i * dim + d] = std::clamp(std::nearbyint(rotated[d] / sp[i]), -level, level);
      else
        sp[i] = quantize_row(rotated, dim, level, smallest, qp + i * dim);
    }
  });
  return {q, scale};
}

// arithmetic.softmax_weights written as float64 into out[:, :n] (the coder reads float64 rows).
void softmax_weights_into(torch::Tensor logits, torch::Tensor out, double log2e) {
  auto z = logits.contiguous();
  const int64_t n = z.size(-1), rows = z.numel() / n, stride = out.stride(0);
  TORCH_CHECK(out.dim() == 2 && out.size(0) == rows && out.size(1) >= n && out.stride(1) == 1);
  const float* in = z.data_ptr<float>();
  double* o = out.data_ptr<double>();
  const float c = static_cast<float>(log2e);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* x = in + r * n;
      const float top = row_max(x, n);
      double* out_row = o + r * stride;
      for (int64_t j = 0; j < n; ++j) out_row[j] = static_cast<double>(exp2_neg((top - x[j]) * c));
    }
  });
}

// arithmetic.silu(gate) * up.
torch::Tensor silu_mul(torch::Tensor gate, torch::Tensor up, double log2e) {
  auto g = gate.contiguous(), u = up.contiguous();
  auto out = torch::empty_like(g);
  const float* gp = g.data_ptr<float>();
  const float* up_ = u.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const float c = static_cast<float>(log2e);
  at::parallel_for(0, g.numel(), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float x = gp[i];
      const float t = exp2_neg(std::fabs(x) * c);
      const float numerator = x >= 0 ? 1.0f : t;
      o[i] = (x * (numerator / (1.0f + t))) * up_[i];
    }
  });
  return out;
}

// arithmetic.attention's weights for one query: from its integer scores acc[0..n) (keys 0..n-1
// attended), the keys' and values' scales and the query's scale, the integer weights w[0..n)
// and the returned output factor. scaled and e are scratch of n floats.
float query_weights(const float* acc, const float* kscale, const float* vscale, float qscale, int64_t n, float* w,
                    float* scaled, float* e) {
  for (int64_t j = 0; j < n; ++j) scaled[j] = acc[j] * kscale[j];
  const float top = row_max(scaled, n);
  for (int64_t j = 0; j < n; ++j) {
    e[j] = exp2_neg((top - scaled[j]) * qscale);
    w[j] = e[j] * vscale[j];
  }
  const double normalizer = rounded_sum(e, n, 1048576.0f);
  const float top_ev = row_max(w, n);
  const float to_fixed = 1048576.0f / top_ev;
  for (int64_t j = 0; j < n; ++j) w[j] = std::nearbyint(w[j] * to_fixed);
  const double sum = rounded_sum(w, n, 1.0f);
  const float to_weights = static_cast<float>(65536.0 / sum);
  for (int64_t j = 0; j < n; ++j) w[j] = std::nearbyint(w[j] * to_weights);
  return static_cast<float>(sum * static_cast<double>(top_ev) / (65536.0 * normalizer));
}

// The keys a query at `position` attends among `keys` (arithmetic.attention): the first `sinks`,
// and those within `window` of it; [0, sink_end) and [first, end).
struct Visible {
  int64_t sink_end, first, end;
  Visible(int64_t position, int64_t keys, int64_t window, int64_t sinks) {
    end = std::min(position, keys - 1) + 1;
    first = std::clamp(position - window + 1, int64_t{0}, end);
    sink_end = std::min(sinks, first);
  }
  int64_t count() const { return sink_end + end - first; }
  // x's visible entries, packed: x itself where they are one range, else copied into `packed`.
  const float* pack(const float* x, float* packed) const {
    if (sink_end == 0) return x + first;
    std::copy(x, x + sink_end, packed);
    std::copy(x + first, x + end, packed + sink_end);
    return packed;
  }
};

// arithmetic.attention's weights: from integer scores [B, Q, T] (B = rows * kv heads), key and value
// scales [B, 1, T], query scales [B, Q, 1] and each query's position [Q] (keys after it, and
// `window` or more before it except the first `sinks`, are not attended), the integer weights
// [B, Q, T] and the output factor [B, Q, 1].
std::vector<torch::Tensor> attention_weights(torch::Tensor scores, torch::Tensor k_scale, torch::Tensor q_scale,
                                             torch::Tensor v_scale, torch::Tensor positions, int64_t window,
                                             int64_t sinks) {
  auto s = scores.contiguous(), ks = k_scale.contiguous(), qs = q_scale.contiguous(), vs = v_scale.contiguous();
  auto pos = positions.contiguous();
  const int64_t batch = s.size(0), queries = s.size(1), keys = s.size(2);
  auto weights = torch::zeros_like(s);
  auto factor = torch::empty({batch, queries, 1}, s.options());
  const float* sp = s.data_ptr<float>();
  const float* ksp = ks.data_ptr<float>();
  const float* qsp = qs.data_ptr<float>();
  const float* vsp = vs.data_ptr<float>();
  const int64_t* pp = pos.data_ptr<int64_t>();
  float* wp = weights.data_ptr<float>();
  float* fp = factor.data_ptr<float>();
  at::parallel_for(0, batch * queries, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scaled(keys), e(keys), w(keys), packed(3 * keys);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / queries, i = row % queries;
      const Visible seen(pp[i], keys, window, sinks);
      fp[row] = query_weights(seen.pack(sp + row * keys, packed.data()), seen.pack(ksp + b * keys, packed.data() + keys),
                              seen.pack(vsp + b * keys, packed.data() + 2 * keys), qsp[row], seen.count(), w.data(),
                              scaled.data(), e.data());
      float* out = wp + row * keys;
      std::copy(w.data(), w.data() + seen.sink_end, out);
      std::copy(w.data() + seen.sink_end, w.data() + seen.count(), out + seen.first);
    }
  });
  return {weights, factor};
}

// arithmetic.hadamard: y = x @ H over each length-n row of x, H = F1 ⊗ F2 ⊗ ... ⊗ S with ±1 Paley
// factors F (float64 [m, m]) and Sylvester's matrix S of order `sylvester` (a power of two),
// as sums and differences along each factor's axis and butterflies for S. The values are
// integers and every partial sum is bounded by n * max|x| < 2**24 (float32) or 2**53 (float64),
// so all of it is exact and gives the torch code's bits.
template <typename T>
struct Hadamard {
  std::vector<std::vector<T>> signs;  // each Paley factor's entries f[j][i], row major
  std::vector<int64_t> orders;
  int64_t sylvester;

  Hadamard(const std::vector<torch::Tensor>& factors, int64_t sylvester) : sylvester(sylvester) {
    for (const auto& f : factors) {
      auto fc = f.to(torch::kFloat64).contiguous();
      signs.emplace_back(fc.data_ptr<double>(), fc.data_ptr<double>() + fc.numel());
      orders.push_back(f.size(0));
    }
  }

  // y (n values) <- y @ H, in place; scratch holds n values. With unit > 1, y holds unit rows
  // interleaved (n = order * unit, [order][unit]): H is applied to each, with loops unit times as
  // long (H ⊗ I: the butterflies then start at distance unit).
  void apply(T* y, int64_t n, T* scratch, int64_t unit = 1) const {
    int64_t after = n;
    for (size_t t = 0; t < orders.size(); ++t) {
      const int64_t m = orders[t];
      const T* f = signs[t].data();
      after /= m;
      for (int64_t p = 0; p < n; p += m * after) {  // y[p, i, a] = sum_j f[j][i] * y[p, j, a]
        T* block = y + p;
        for (int64_t i = 0; i < m; ++i) {
          T* __restrict o = scratch + i * after;
          for (int64_t a = 0; a < after; ++a) o[a] = 0;
          for (int64_t j = 0; j < m; ++j) {  // signs are ±1: sums and differences, vectorised over a
            const T* __restrict xj = block + j * after;
            if (f[j * m + i] > 0)
              for (int64_t a = 0; a < after; ++a) o[a] = o[a] + xj[a];
            else
              for (int64_t a = 0; a < after; ++a) o[a] = o[a] - xj[a];
          }
        }
        std::copy(scratch, scratch + m * after, block);
      }
    }
    for (int64_t half = unit; half < sylvester * unit; half *= 2)  // S = H_2 ⊗ ... ⊗ H_2 on the last axis
      for (int64_t b = 0; b < n; b += 2 * half)
        for (int64_t i = b; i < b + half; ++i) {
          const T u = y[i], v = y[i + half];
          y[i] = u + v;
          y[i + half] = u - v;
        }
  }
};

template <typename T>
torch::Tensor hadamard_rows(torch::Tensor xc, const std::vector<torch::Tensor>& factors, int64_t sylvester) {
  const int64_t n = xc.size(-1), rows = xc.numel() / n;
  const Hadamard<T> h(factors, sylvester);
  auto out = torch::empty_like(xc);
  const T* in = xc.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(n);
    for (int64_t r = begin; r < end; ++r) {
      std::copy(in + r * n, in + (r + 1) * n, op + r * n);
      h.apply(op + r * n, n, scratch.data());
    }
  });
  return out;
}

// arithmetic.rotate_weights after its grid step: nearbyint(w / step) @ H * factor for each vector along
// the last axis (with `columns`, along the first axis of a matrix), float64; kRotated vectors at a
// time, interleaved, so that every loop of `apply` runs over many values.
constexpr int64_t kRotated = 8;

// `out` (contiguous, w's shape) may be w itself: each block of vectors is read before it is written.
torch::Tensor rotate_weights(torch::Tensor w, torch::Tensor out, double step, double factor,
                             std::vector<torch::Tensor> factors, int64_t sylvester, bool columns) {
  auto wc = w.contiguous();
  TORCH_CHECK(!columns || wc.dim() == 2);
  TORCH_CHECK(out.is_contiguous() && out.sizes() == wc.sizes() && out.scalar_type() == torch::kDouble);
  const int64_t n = columns ? wc.size(0) : wc.size(-1), vectors = wc.numel() / n;
  const int64_t along = columns ? vectors : 1, apart = columns ? 1 : n;  // between elements, between vectors
  const Hadamard<double> h(factors, sylvester);
  const double* in = wc.data_ptr<double>();
  double* op = out.data_ptr<double>();
  at::parallel_for(0, (vectors + kRotated - 1) / kRotated, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> y(n * kRotated), scratch(n * kRotated);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * kRotated, count = std::min(kRotated, vectors - first);
      std::fill(y.begin(), y.end(), 0.0);
      for (int64_t j = 0; j < n; ++j)
        for (int64_t b = 0; b < count; ++b)
          y[j * kRotated + b] = std::nearbyint(in[(first + b) * apart + j * along] / step);
      h.apply(y.data(), n * kRotated, scratch.data(), kRotated);
      for (int64_t j = 0; j < n; ++j)
        for (int64_t b = 0; b < count; ++b) op[(first + b) * apart + j * along] = y[j * kRotated + b] * factor;
    }
  });
  return out;
}

// float32 (activations, every sum below 2**24) or float64 (weights on a grid, below 2**53).
torch::Tensor hadamard(torch::Tensor x, std::vector<torch::Tensor> factors, int64_t sylvester) {
  auto xc = x.contiguous();
  if (xc.scalar_type() == torch::kDouble) return hadamard_rows<double>(xc, factors, sylvester);
  return hadamard_rows<float>(xc, factors, sylvester);
}

// arithmetic.quantize_rotated: per row, q, s = quantize(x, levels); r, t = quantize(q @ H, rotated_levels); r and t * s.
std::vector<torch::Tensor> quantize_rotated(torch::Tensor x, double levels, double rotated_levels,
                                            std::vector<torch::Tensor> factors, int64_t sylvester, double tiny) {
  auto xc = x.contiguous();
  const int64_t n = xc.size(-1), rows = xc.numel() / n;
  const Hadamard<float> h(factors, sylvester);
  auto r = torch::empty_like(xc);
  auto sizes = xc.sizes().vec();
  sizes.back() = 1;
  auto scale = torch::empty(sizes, xc.options());
  const float* in = xc.data_ptr<float>();
  float* rp = r.data_ptr<float>();
  float* sp = scale.data_ptr<float>();
  const float level = static_cast<float>(levels), rotated_level = static_cast<float>(rotated_levels),
              smallest = static_cast<float>(tiny);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> q(n), scratch(n);
    for (int64_t row = begin; row < end; ++row) {
      const float s = quantize_row(in + row * n, n, level, smallest, q.data());
      h.apply(q.data(), n, scratch.data());
      sp[row] = quantize_row(q.data(), n, rotated_level, smallest, rp + row * n) * s;
    }
  });
  return {r, scale};
}

// Integer weights for `linear`: [N, K] int16 reordered as [ceil(N/16), ceil(K/2), 16, 2], so that
// one 256-bit load holds two neighbouring k of eight output channels (zeros pad N and K). Weights
// in [-256, 255] (every real model's: K >= 515 leaves at most 229 levels) are stored compact, as
// w = 2a + b with a int8 and b one bit: each pair of k of 16 channels in kPairBytes, the 32 a
// (in that order) and then a 32-bit word of the b. A decoding step of a few rows streams every
// weight from memory, and its time is their bytes: 9 bits instead of 16 (SmolLM2: 151 MB a step
// instead of 269). `linear` widens them back a block at a time.
constexpr int64_t kPairBytes = 2 * kChannels + 4;

torch::Tensor pack_weight(torch::Tensor weight) {
  auto w = weight.to(torch::kInt16).contiguous();
  const int64_t n = w.size(0), k = w.size(1), pairs = (k + 1) / 2, blocks = (n + kChannels - 1) / kChannels;
  auto wide = torch::zeros({blocks, pairs, kChannels, 2}, torch::kInt16);
  const int16_t* src = w.data_ptr<int16_t>();
  int16_t* dst = wide.data_ptr<int16_t>();
  for (int64_t c = 0; c < n; ++c)
    for (int64_t j = 0; j < k; ++j)
      dst[(((c / kChannels) * pairs + j / 2) * kChannels + c % kChannels) * 2 + j % 2] = src[c * k + j];
#if defined(__AVX2__)
  const bool fits = w.numel() > 0 && w.min().item<int16_t>() >= -256 && w.max().item<int16_t>() <= 255;
#else
  const bool fits = false;  // linear_tile widens compact weights in AVX2 registers only
#endif
  if (!fits) return wide;
  auto compact = torch::empty({blocks, pairs, kPairBytes}, torch::kInt8);
  int8_t* out = compact.data_ptr<int8_t>();
  for (int64_t i = 0; i < blocks * pairs; ++i) {
    const int16_t* lanes = dst + i * 2 * kChannels;
    int8_t* bytes = out + i * kPairBytes;
    uint32_t bits = 0;
    for (int64_t l = 0; l < 2 * kChannels; ++l) {
      bytes[l] = static_cast<int8_t>(lanes[l] >> 1);  // floor(w / 2)
      bits |= static_cast<uint32_t>(lanes[l] & 1) << l;
    }
    std::memcpy(bytes + 2 * kChannels, &bits, sizeof bits);
  }
  return compact;
}

#if defined(__AVX2__)
// The 32 weights of pair p of a block (two k of 16 channels) as int16 lanes: wide ones loaded,
// compact ones widened from 2a + b.
inline void load_pair(const int16_t* w, int64_t p, __m256i& w0, __m256i& w1) {
  w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + p * 2 * kChannels));
  w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + p * 2 * kChannels + kChannels));
}

// 16 compact weights as int16 lanes 2a + b: a from `bytes`, b from the low 16 bits of `bits`.
inline __m256i widen(const int8_t* bytes, uint32_t bits) {
  const __m256i a = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes)));
  const __m256i twice = _mm256_add_epi16(a, a);
#if defined(__AVX512BW__) && defined(__AVX512VL__)
  return _mm256_mask_add_epi16(twice, static_cast<__mmask16>(bits), twice, _mm256_set1_epi16(1));
#else
  // lane l tests bit l: -1 where it is set, and 2a - (-1) = 2a + 1
  const __m256i lane_bits = _mm256_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384,
                                               std::numeric_limits<int16_t>::min());
  const __m256i b = _mm256_set1_epi16(static_cast<int16_t>(bits));
  return _mm256_sub_epi16(twice, _mm256_cmpeq_epi16(_mm256_and_si256(b, lane_bits), lane_bits));
#endif
}

inline void load_pair(const int8_t* w, int64_t p, __m256i& w0, __m256i& w1) {
  const int8_t* bytes = w + p * kPairBytes;
  uint32_t bits;
  std::memcpy(&bits, bytes + 2 * kChannels, sizeof bits);
  w0 = widen(bytes, bits);
  w1 = widen(bytes + kChannels, bits >> kChannels);
}
#endif

// A block of compact weights (pairs x kPairBytes) widened to int16 (pairs x 32): when several
// row tiles read the block, from cache, instead of each widening it again. (pack_weight makes
// compact weights only where AVX2 is.)
inline void widen_block(const int8_t* compact, int64_t pairs, int16_t* w) {
#if defined(__AVX2__)
  for (int64_t p = 0; p < pairs; ++p) {
    __m256i w0, w1;
    load_pair(compact, p, w0, w1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + p * 2 * kChannels), w0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + p * 2 * kChannels + kChannels), w1);
  }
#endif
}

// Rows x[0..Rows) (int16, k pairs each, row stride lda) times one block of 16 packed channels
// (int16, or compact: int8 and bits): int16 products summed in int32, exact (|x| <= 511,
// |w| < 2**15 / 2, K * |x| * |w| < 2**31).
template <int Rows, typename Weight>
inline void linear_tile(const int16_t* x, int64_t lda, const Weight* w, int64_t pairs, int32_t* acc) {
#if defined(__AVX2__)
  __m256i sums[Rows][2];
  for (int r = 0; r < Rows; ++r) sums[r][0] = sums[r][1] = _mm256_setzero_si256();
  for (int64_t p = 0; p < pairs; ++p) {
    __m256i w0, w1;
    load_pair(w, p, w0, w1);
    for (int r = 0; r < Rows; ++r) {
      int32_t pair;
      std::memcpy(&pair, x + r * lda + 2 * p, sizeof pair);
      const __m256i xr = _mm256_set1_epi32(pair);
      sums[r][0] = _mm256_add_epi32(sums[r][0], _mm256_madd_epi16(xr, w0));
      sums[r][1] = _mm256_add_epi32(sums[r][1], _mm256_madd_epi16(xr, w1));
    }
  }
  for (int r = 0; r < Rows; ++r) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + r * kChannels), sums[r][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + r * kChannels + 8), sums[r][1]);
  }
#else  // wide weights only (pack_weight)
  for (int r = 0; r < Rows; ++r)
    for (int c = 0; c < kChannels; ++c) {
      int32_t sum = 0;
      for (int64_t p = 0; p < 2 * pairs; ++p)
        sum += static_cast<int32_t>(x[r * lda + p]) * static_cast<int32_t>(w[(p / 2 * kChannels + c) * 2 + p % 2]);
      acc[r * kChannels + c] = sum;
    }
#endif
}

// arithmetic.ExactLinear: y = (x @ W.T) * scale * row_scale for integer-valued x [M, K] (float32) and
// packed integer weights. The integer product is exact, as the float32 pieces' sum is, and is
// rounded to float32 once, as theirs is; then the same two float32 products.
torch::Tensor linear(torch::Tensor x, torch::Tensor packed, int64_t n, torch::Tensor scale, torch::Tensor row_scale) {
  auto xc = x.contiguous(), sc = scale.contiguous(), rs = row_scale.contiguous();
  const int64_t k = xc.size(-1), m = xc.numel() / k, blocks = packed.size(0), pairs = packed.size(1);
  const bool compact = packed.scalar_type() == torch::kChar;
  TORCH_CHECK(packed.size(2) == (compact ? kPairBytes : kChannels) && 2 * pairs >= k && blocks * kChannels >= n &&
              rs.numel() == m);
  auto sizes = xc.sizes().vec();
  sizes.back() = n;
  auto out = torch::empty(sizes, xc.options());
  std::vector<int16_t> xi(m * 2 * pairs, 0);  // |x| <= 511
  const float* xp = xc.data_ptr<float>();
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < k; ++j) xi[r * 2 * pairs + j] = static_cast<int16_t>(xp[r * k + j]);
  const int16_t* wp = compact ? nullptr : packed.data_ptr<int16_t>();
  const int8_t* cp = compact ? packed.data_ptr<int8_t>() : nullptr;
  const float* scp = sc.data_ptr<float>();
  const float* rsp = rs.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> acc(kRows * kChannels);
    const auto tile = [&](int64_t rows, const int16_t* xr, const auto* w) {
      switch (rows) {
        case 6: linear_tile<6>(xr, 2 * pairs, w, pairs, acc.data()); break;
        case 5: linear_tile<5>(xr, 2 * pairs, w, pairs, acc.data()); break;
        case 4: linear_tile<4>(xr, 2 * pairs, w, pairs, acc.data()); break;
        case 3: linear_tile<3>(xr, 2 * pairs, w, pairs, acc.data()); break;
        case 2: linear_tile<2>(xr, 2 * pairs, w, pairs, acc.data()); break;
        default: linear_tile<1>(xr, 2 * pairs, w, pairs, acc.data()); break;
      }
    };
    std::vector<int16_t> widened(compact && m > kRows ? pairs * 2 * kChannels : 0);
    for (int64_t b = begin; b < end; ++b) {
      const int16_t* w = compact ? nullptr : wp + b * pairs * 2 * kChannels;
      const int8_t* w8 = compact ? cp + b * pairs * kPairBytes : nullptr;
      if (!widened.empty()) {
        widen_block(w8, pairs, widened.data());
        w = widened.data();
      }
      const int64_t c0 = b * kChannels, width = std::min(kChannels, n - c0);
      for (int64_t r0 = 0; r0 < m; r0 += kRows) {
        const int64_t rows = std::min(kRows, m - r0);
        const int16_t* xr = xi.data() + r0 * 2 * pairs;
        if (w)
          tile(rows, xr, w);
        else
          tile(rows, xr, w8);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < width; ++c)
            op[(r0 + r) * n + c0 + c] = static_cast<float>(acc[r * kChannels + c]) * scp[c0 + c] * rsp[r0 + r];
      }
    }
  });
  return out;
}

// Keys (and values) read this far ahead of their use: a decoding step streams every layer's cache
// from memory, (row, head) by (row, head), and the hardware prefetcher stops at each 4 KB page;
// asking for them early keeps the stream at the memory's bandwidth (attention 10% faster, SmolLM2,
// 38 rows, window 1024, Intel Xeon AVX-512).
constexpr int64_t kPrefetchKeys = 64;

// Keys as 8 or 16 bits wide in registers: int16 lanes for _mm256_madd_epi16.
#if defined(__AVX2__)
inline __m256i load_keys(const int16_t* k) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k)); }
inline __m256i load_keys(const int8_t* k) {
  return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(k)));
}
#endif

// Scores of one query against keys 0..n-1: out[j] = sum_d q[d] * k[j * dim + d], int16 products
// summed in int32 (dim * max|q| * max|k| < 2**24 for the exact models: the integers float32 would
// give). Keys are int16 or int8 (Key), the same integers either way.
template <typename Key>
inline void query_scores(const int16_t* q, const Key* k, int64_t n, int64_t dim, float* out) {
  int64_t j = 0;
#if defined(__AVX2__)
  if (dim % 16 == 0) {
    for (; j + 8 <= n; j += 8) {  // eight keys, each summed in a lane of its own vector
      const Key* kb = k + j * dim;
      for (int64_t byte = 0; byte < 8 * dim * static_cast<int64_t>(sizeof(Key)); byte += 64)
        __builtin_prefetch(reinterpret_cast<const char*>(kb + kPrefetchKeys * dim) + byte);
      __m256i r[8];
      for (int t = 0; t < 8; ++t) r[t] = _mm256_setzero_si256();
      for (int64_t d = 0; d < dim; d += 16) {
        const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + d));
#pragma GCC unroll 8
        for (int t = 0; t < 8; ++t) {
          const __m256i kv = load_keys(kb + t * dim + d);
          r[t] = _mm256_add_epi32(r[t], _mm256_madd_epi16(qv, kv));
        }
      }
      // hadd twice: the low 128 bits hold keys 0..3's sums of their low halves, the high 128 of their high halves
      const __m256i lo = _mm256_hadd_epi32(_mm256_hadd_epi32(r[0], r[1]), _mm256_hadd_epi32(r[2], r[3]));
      const __m256i hi = _mm256_hadd_epi32(_mm256_hadd_epi32(r[4], r[5]), _mm256_hadd_epi32(r[6], r[7]));
      const __m256i sums = _mm256_add_epi32(_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31));
      _mm256_storeu_ps(out + j, _mm256_cvtepi32_ps(sums));
    }
  }
#endif
  for (; j < n; ++j) {
    int32_t sum = 0;
    for (int64_t d = 0; d < dim; ++d) sum += static_cast<int32_t>(q[d]) * static_cast<int32_t>(k[j * dim + d]);
    out[j] = static_cast<float>(sum);
  }
}

// sums[i * dim + d] += sum_j w[i * w_stride + j] * v[j * dim + d] for queries i < Q, keys j < n
// and d < dim: each value is read and converted once for all Q queries. The weights are
// integers summing to about 2**16 and |v| <= 127: every product and partial sum is an integer
// below 2**24, exact in float32 in any order, fused or not.
template <int Q>
inline void add_weighted_values(const float* w, int64_t w_stride, const int8_t* v, int64_t n, int64_t dim,
                                float* sums) {
  int64_t d0 = 0;
#if defined(__AVX512F__)
  for (; d0 + 64 <= dim; d0 += 64) {  // 64 dimensions in four registers per query
    __m512 acc[Q][4];
    for (int i = 0; i < Q; ++i)
      for (int s = 0; s < 4; ++s) acc[i][s] = _mm512_loadu_ps(sums + i * dim + d0 + 16 * s);
    for (int64_t j = 0; j < n; ++j) {
      const int8_t* vj = v + j * dim + d0;
      __builtin_prefetch(vj + kPrefetchKeys * dim);
      __m512 x[4];
      for (int s = 0; s < 4; ++s)
        x[s] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(vj + 16 * s))));
      for (int i = 0; i < Q; ++i) {
        const __m512 wj = _mm512_set1_ps(w[i * w_stride + j]);
        for (int s = 0; s < 4; ++s) acc[i][s] = _mm512_fmadd_ps(wj, x[s], acc[i][s]);
      }
    }
    for (int i = 0; i < Q; ++i)
      for (int s = 0; s < 4; ++s) _mm512_storeu_ps(sums + i * dim + d0 + 16 * s, acc[i][s]);
  }
#elif defined(__AVX2__) && defined(__FMA__)
  for (; d0 + 16 <= dim; d0 += 16) {  // 16 dimensions in two registers per query
    __m256 acc[Q][2];
    for (int i = 0; i < Q; ++i)
      for (int s = 0; s < 2; ++s) acc[i][s] = _mm256_loadu_ps(sums + i * dim + d0 + 8 * s);
    for (int64_t j = 0; j < n; ++j) {
      const int8_t* vj = v + j * dim + d0;
      __builtin_prefetch(vj + kPrefetchKeys * dim);
      __m256 x[2];
      for (int s = 0; s < 2; ++s)
        x[s] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(vj + 8 * s))));
      for (int i = 0; i < Q; ++i) {
        const __m256 wj = _mm256_set1_ps(w[i * w_stride + j]);
        for (int s = 0; s < 2; ++s) acc[i][s] = _mm256_fmadd_ps(wj, x[s], acc[i][s]);
      }
    }
    for (int i = 0; i < Q; ++i)
      for (int s = 0; s < 2; ++s) _mm256_storeu_ps(sums + i * dim + d0 + 8 * s, acc[i][s]);
  }
#endif
  for (; d0 < dim; ++d0)
    for (int i = 0; i < Q; ++i) {
      float sum = sums[i * dim + d0];
      for (int64_t j = 0; j < n; ++j) sum += w[i * w_stride + j] * static_cast<float>(v[j * dim + d0]);
      sums[i * dim + d0] = sum;
    }
}

// add_weighted_values for any number of queries, up to four at a time (registers).
inline void add_weighted_values(int64_t queries, const float* w, int64_t w_stride, const int8_t* v, int64_t n,
                                int64_t dim, float* sums) {
  for (int64_t i = 0; i < queries; i += 4) {
    const float* wi = w + i * w_stride;
    float* si = sums + i * dim;
    switch (std::min<int64_t>(4, queries - i)) {
      case 4: add_weighted_values<4>(wi, w_stride, v, n, dim, si); break;
      case 3: add_weighted_values<3>(wi, w_stride, v, n, dim, si); break;
      case 2: add_weighted_values<2>(wi, w_stride, v, n, dim, si); break;
      default: add_weighted_values<1>(wi, w_stride, v, n, dim, si); break;
    }
  }
}

// arithmetic.attention with the integer cache read directly (int8 or int16 keys, int8 values: at most
// a quarter of float32's memory traffic, which bounds a decoding step): q [B, Q, D] integers,
// q_scale [B, Q, 1], k [B, T, D] Key, k_scale [B, 1, T], v [B, T, D] int8, v_scale [B, 1, T]
// (B may be strided: rows of a larger cache), positions [Q], window and sinks as in
// attention_weights. The dot products in int32 and the weighted sums are the integers the
// float32 products give, so the output has their bits. `sink_q` (q's shape, or empty: q) scores
// the sinks.
template <typename Key>
torch::Tensor attention_cached_keys(torch::Tensor q, torch::Tensor q_scale, torch::Tensor k, torch::Tensor k_scale,
                                    torch::Tensor v, torch::Tensor v_scale, torch::Tensor positions, int64_t window,
                                    int64_t sinks, torch::Tensor sink_q) {
  auto qc = q.contiguous(), qs = q_scale.contiguous(), pos = positions.contiguous();
  auto sqc = sink_q.numel() ? sink_q.contiguous() : qc;
  TORCH_CHECK(sqc.sizes() == qc.sizes());
  const int64_t batch = qc.size(0), queries = qc.size(1), dim = qc.size(2), keys = k.size(1);
  TORCH_CHECK(k.stride(2) == 1 && v.stride(2) == 1 && k.stride(1) == dim && v.stride(1) == dim);
  TORCH_CHECK(k_scale.stride(2) == 1 && v_scale.stride(2) == 1);
  auto out = torch::empty_like(qc);
  const float* qp = qc.data_ptr<float>();
  const float* sqp = sqc.data_ptr<float>();
  const float* qsp = qs.data_ptr<float>();
  const Key* kp = k.data_ptr<Key>();
  const int8_t* vp = v.data_ptr<int8_t>();
  const float* ksp = k_scale.data_ptr<float>();
  const float* vsp = v_scale.data_ptr<float>();
  const int64_t* pp = pos.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const int64_t k_stride = k.stride(0), v_stride = v.stride(0), ks_stride = k_scale.stride(0),
                vs_stride = v_scale.stride(0);
  // Keys some query attends: [0, sink_end) and [lo, hi), a superset of each query's Visible.
  int64_t lo = keys, hi = 0;
  for (int64_t i = 0; i < queries; ++i) {
    const Visible seen(pp[i], keys, window, sinks);
    lo = std::min(lo, seen.first);
    hi = std::max(hi, seen.end);
  }
  const int64_t sink_end = std::min(sinks, lo);
  // One (row, key/value head) at a time, with all its queries: each key and value is read and
  // converted once for all of them. Each query's weights are spread over the keys some query
  // attends, zero where it does not: a zero weight adds exactly nothing.
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(queries * keys), spread(queries * keys), w(keys), scaled(keys), e(keys), packed(3 * keys),
        factors(queries), sums(queries * dim);
    std::vector<int16_t> qi(queries * dim), sqi(queries * dim);  // |q| <= 723: int16 products summed in int32
    for (int64_t b = begin; b < end; ++b) {
      const Key* kb = kp + b * k_stride;
      const int8_t* vb = vp + b * v_stride;
      for (int64_t d = 0; d < queries * dim; ++d) {
        qi[d] = static_cast<int16_t>(qp[b * queries * dim + d]);
        sqi[d] = static_cast<int16_t>(sqp[b * queries * dim + d]);
      }
      for (int64_t i = 0; i < queries; ++i) {
        float* scores = acc.data() + i * keys;
        query_scores(qi.data() + i * dim, kb + lo * dim, hi - lo, dim, scores + lo);
        query_scores(sqi.data() + i * dim, kb, std::min(sinks, hi), dim, scores);  // the sinks, also within [lo, hi)
        const Visible seen(pp[i], keys, window, sinks);
        factors[i] = query_weights(
            seen.pack(scores, packed.data()), seen.pack(ksp + b * ks_stride, packed.data() + keys),
            seen.pack(vsp + b * vs_stride, packed.data() + 2 * keys), qsp[b * queries + i], seen.count(), w.data(),
            scaled.data(), e.data());
        float* wi = spread.data() + i * keys;
        std::fill(wi, wi + sink_end, 0.0f);
        std::fill(wi + lo, wi + hi, 0.0f);
        std::copy(w.data(), w.data() + seen.sink_end, wi);
        std::copy(w.data() + seen.sink_end, w.data() + seen.count(), wi + seen.first);
      }
      std::fill(sums.begin(), sums.end(), 0.0f);
      add_weighted_values(queries, spread.data(), keys, vb, sink_end, dim, sums.data());
      add_weighted_values(queries, spread.data() + lo, keys, vb + lo * dim, hi - lo, dim, sums.data());
      for (int64_t i = 0; i < queries; ++i)
        for (int64_t d = 0; d < dim; ++d) op[(b * queries + i) * dim + d] = sums[i * dim + d] * factors[i];
    }
  });
  return out;
}

torch::Tensor attention_cached(torch::Tensor q, torch::Tensor q_scale, torch::Tensor k, torch::Tensor k_scale,
                               torch::Tensor v, torch::Tensor v_scale, torch::Tensor positions, int64_t window,
                               int64_t sinks, torch::Tensor sink_q) {
  TORCH_CHECK(k.scalar_type() == torch::kChar || k.scalar_type() == torch::kShort, "keys must be int8 or int16");
  if (k.scalar_type() == torch::kChar)
    return attention_cached_keys<int8_t>(q, q_scale, k, k_scale, v, v_scale, positions, window, sinks, sink_q);
  return attention_cached_keys<int16_t>(q, q_scale, k, k_scale, v, v_scale, positions, window, sinks, sink_q);
}

// bias.AdaptiveBias.apply over rows: weights [R, V] float64 (any row stride) rewritten in place
// as floor(w * weight_scale) * multipliers[(bias >> shift) - low_step] * output_scale; for the
// rows listed in `learning`, pull[j] += products[j] * rate // sum(products) is added while the
// row is in cache (the integer products are the rewritten weights / output_scale, exactly).
// Every step is exact and the sums are of integers, so the bits are numpy's in any order.
void bias_apply(torch::Tensor weights, torch::Tensor bias, torch::Tensor multipliers, int64_t shift, int64_t low_step,
                double weight_scale, double output_scale, torch::Tensor learning, torch::Tensor pull, int64_t rate) {
  TORCH_CHECK(weights.dim() == 2 && weights.stride(1) == 1 && weights.scalar_type() == torch::kFloat64);
  auto b = bias.contiguous(), m = multipliers.contiguous(), l = learning.contiguous();
  const int64_t rows = weights.size(0), n = weights.size(1), stride = weights.stride(0);
  TORCH_CHECK(b.numel() == n && pull.is_contiguous() && pull.numel() == n && l.numel() == rows);
  double* w = weights.data_ptr<double>();
  const int64_t* bp = b.data_ptr<int64_t>();
  const int64_t* mp = m.data_ptr<int64_t>();
  const bool* lp = l.data_ptr<bool>();
  int64_t* pp = pull.data_ptr<int64_t>();
  std::mutex merging;
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    // Locals, not the captured references: a store to an int64 array could alias those, which
    // keeps the compiler from vectorising the loops.
    const int64_t cols = n, row_shift = shift, low = low_step, step_rate = rate;
    const double scale_in = weight_scale, scale_out = output_scale, to_integers = 1.0 / output_scale;  // powers of two
    std::vector<int64_t> pulled;
    for (int64_t r = begin; r < end; ++r) {
      double* __restrict row = w + r * stride;
      int64_t total = 0;
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t product = static_cast<int64_t>(std::floor(row[j] * scale_in)) * mp[(bp[j] >> row_shift) - low];
        row[j] = static_cast<double>(product) * scale_out;
        total += product;
      }
      if (!lp[r]) continue;
      if (pulled.empty()) pulled.assign(cols, 0);
      int64_t* __restrict sums = pulled.data();
      const double inverse = 1.0 / static_cast<double>(total);
      for (int64_t j = 0; j < cols; ++j) {
        // floor(x / total) without a division: x / total <= rate, so the float64 estimate is
        // off by at most one, which the remainder corrects.
        const int64_t x = static_cast<int64_t>(row[j] * to_integers) * step_rate;
        int64_t quotient = static_cast<int64_t>(static_cast<double>(x) * inverse);
        const int64_t remainder = x - quotient * total;
        quotient += (remainder >= total) - (remainder < 0);
        sums[j] += quotient;
      }
    }
    if (pulled.empty()) return;
    const std::lock_guard<std::mutex> lock(merging);
    for (int64_t j = 0; j < cols; ++j) pp[j] += pulled[j];
  });
}

// bias.AdaptiveBias.learn: bias -= pull, then bias[t] += rate for each token t, then clipped
// to [low, high]; pull is zeroed for the next step. Integers: any order.
void bias_learn(torch::Tensor pull, torch::Tensor tokens, torch::Tensor bias, int64_t rate, int64_t low,
                int64_t high) {
  auto t = tokens.contiguous();
  TORCH_CHECK(bias.is_contiguous() && pull.is_contiguous() && pull.numel() == bias.numel());
  const int64_t n = bias.numel();
  int64_t* pp = pull.data_ptr<int64_t>();
  const int64_t* tp = t.data_ptr<int64_t>();
  int64_t* bp = bias.data_ptr<int64_t>();
  for (int64_t j = 0; j < n; ++j) bp[j] -= pp[j];
  for (int64_t i = 0; i < t.numel(); ++i) bp[tp[i]] += rate;
  for (int64_t j = 0; j < n; ++j) bp[j] = std::clamp(bp[j], low, high);
  std::fill(pp, pp + n, int64_t{0});
}

// side.fixed_totals: for each listed row of weights [R, V] float64 (any row stride), the sum of
// floor(w * scale), written to totals; the floors go to out's rows too where out is not empty.
// The floors are integers whose sum stays below 2**53: exact in float64 in any order.
void fixed_totals(torch::Tensor weights, torch::Tensor rows, double scale, torch::Tensor out, torch::Tensor totals) {
  TORCH_CHECK(weights.dim() == 2 && weights.stride(1) == 1 && weights.scalar_type() == torch::kFloat64);
  auto r = rows.contiguous();
  const int64_t n = weights.size(1), stride = weights.stride(0), listed = r.numel();
  const bool keep = out.numel() > 0;
  TORCH_CHECK(totals.is_contiguous() && totals.numel() == listed);
  TORCH_CHECK(!keep || (out.dim() == 2 && out.stride(1) == 1 && out.size(1) == n && out.scalar_type() == torch::kFloat64));
  const double* w = weights.data_ptr<double>();
  const int64_t* rp = r.data_ptr<int64_t>();
  int64_t* tp = totals.data_ptr<int64_t>();
  double* o = keep ? out.data_ptr<double>() : nullptr;
  const int64_t out_stride = keep ? out.stride(0) : 0;
  at::parallel_for(0, listed, 1, [&](int64_t begin, int64_t end) {
    const double factor = scale;  // a local: a store to floors could alias the captured reference
    for (int64_t i = begin; i < end; ++i) {
      const double* row = w + rp[i] * stride;
      double* __restrict floors = keep ? o + rp[i] * out_stride : nullptr;
      double lanes[kLanes] = {};
      int64_t j = 0;
      for (; j + kLanes <= n; j += kLanes)
        for (int l = 0; l < kLanes; ++l) {
          const double x = std::floor(row[j + l] * factor);
          if (keep) floors[j + l] = x;
          lanes[l] += x;
        }
      double sum = 0.0;
      for (int l = 0; l < kLanes; ++l) sum += lanes[l];
      for (; j < n; ++j) {
        const double x = std::floor(row[j] * factor);
        if (keep) floors[j] = x;
        sum += x;
      }
      tp[i] = static_cast<int64_t>(sum);
    }
  });
}

}  // namespace

// learning.rms_step in place, one pass: float64 tensors of one projection (contiguous), the
// gradient as integers [N, K] times a scale per row [N, 1].
void rms_step(torch::Tensor integers, torch::Tensor scale, torch::Tensor mean_square, torch::Tensor master,
              double decay, double keep, double unbias, double floor, double epsilon, double rate) {
  const double* q = integers.data_ptr<double>();
  const double* s = scale.data_ptr<double>();
  double* ms = mean_square.data_ptr<double>();
  double* w = master.data_ptr<double>();
  const int64_t k = integers.size(1);
  const float low = static_cast<float>(floor);
  at::parallel_for(0, integers.size(0), 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin * k; i < end * k; ++i) {
      const double g = q[i] * s[i / k];
      ms[i] = ms[i] * decay + g * g * keep;
      const float unbiased = std::max(static_cast<float>(ms[i] / unbias), low);
      const double rms = static_cast<double>(std::sqrt(unbiased)) + epsilon;  // IEEE sqrt: correctly rounded
      w[i] = w[i] - g / rms * rate;
    }
  });
}

// learning.softmax_backward, one pass per query: the probabilities p from the integer scores q.k
// [B, Q, T] (B = rows * kv heads; float64, contiguous) written over them, the scores' gradient
// ds = p * (dp * d_scale * v_scale - dp_mean) over dp's integer products [B, Q, T] (float64,
// contiguous), and ds * k_scale quantized per row to `levels`: returned, with its scales
// [B, Q, 1]. Keys' and values' scales [B, 1, T] and queries' [B, Q, 1] float32; d_scale and
// dp_mean [B, Q, 1] float64; each query's position [Q]: the keys it sees (`Visible`), the others p = 0.
std::vector<torch::Tensor> softmax_backward(torch::Tensor scores, torch::Tensor dp, torch::Tensor k_scale,
                                            torch::Tensor q_scale, torch::Tensor v_scale, torch::Tensor d_scale,
                                            torch::Tensor dp_mean, torch::Tensor positions, int64_t window,
                                            int64_t sinks, double levels, double tiny) {
  TORCH_CHECK(scores.is_contiguous() && dp.is_contiguous() && scores.sizes() == dp.sizes());
  TORCH_CHECK(scores.scalar_type() == torch::kDouble && dp.scalar_type() == torch::kDouble);
  auto ks = k_scale.contiguous(), qs = q_scale.contiguous(), vs = v_scale.contiguous();
  auto dsc = d_scale.contiguous(), mean = dp_mean.contiguous(), pos = positions.contiguous();
  const int64_t keys = scores.size(-1), queries = scores.size(-2), batch = scores.numel() / (queries * keys);
  TORCH_CHECK(ks.numel() == batch * keys && vs.numel() == batch * keys && qs.numel() == batch * queries);
  TORCH_CHECK(dsc.numel() == batch * queries && mean.numel() == batch * queries && pos.numel() == queries);
  auto a = torch::empty_like(scores);
  auto sizes = scores.sizes().vec();
  sizes.back() = 1;
  auto a_scale = torch::empty(sizes, scores.options());
  double *sp = scores.data_ptr<double>(), *dpp = dp.data_ptr<double>(), *ap = a.data_ptr<double>();
  double* asp = a_scale.data_ptr<double>();
  const float* ksp = ks.data_ptr<float>();
  const float* qsp = qs.data_ptr<float>();
  const float* vsp = vs.data_ptr<float>();
  const double* dsp = dsc.data_ptr<double>();
  const double* mp = mean.data_ptr<double>();
  const int64_t* pp = pos.data_ptr<int64_t>();
  at::parallel_for(0, batch * queries, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / queries;
      const Visible seen(pp[row % queries], keys, window, sinks);
      double* p = sp + row * keys;
      double* ds = dpp + row * keys;
      double* x = ap + row * keys;
      const float* kb = ksp + b * keys;
      const float* vb = vsp + b * keys;
      const double query = qsp[row];
      for (int64_t j = 0; j < keys; ++j) {
        const bool visible = j < seen.sink_end || (j >= seen.first && j < seen.end);
        p[j] = visible ? p[j] * static_cast<double>(kb[j]) * query : -std::numeric_limits<double>::infinity();
      }
      const double top = row_max(p, keys);
      for (int64_t j = 0; j < keys; ++j)
        p[j] = std::nearbyint(static_cast<double>(exp2_neg(static_cast<float>(top - p[j]))) * 1048576.0);
      const double total = integer_sum(p, keys);
      const double scale = dsp[row], shift = mp[row];
      for (int64_t j = 0; j < keys; ++j) {
        p[j] = p[j] / total;
        ds[j] = p[j] * (ds[j] * scale * static_cast<double>(vb[j]) - shift);
        x[j] = ds[j] * static_cast<double>(kb[j]);
      }
      asp[row] = quantize_row<double>(x, keys, levels, tiny, x);
    }
  });
  return {a, a_scale};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("quantize", &quantize);
  m.def("rotary_quantize", &rotary_quantize);
  m.def("hadamard", &hadamard);
  m.def("rotate_weights", &rotate_weights);
  m.def("quantize_rotated", &quantize_rotated);
  m.def("pack_weight", &pack_weight);
  m.def("linear", &linear);
  m.def("softmax_weights_into", &softmax_weights_into);
  m.def("silu_mul", &silu_mul);
  m.def("attention_weights", &attention_weights);
  m.def("attention_cached", &attention_cached);
  m.def("bias_apply", &bias_apply);
  m.def("bias_learn", &bias_learn);
  m.def("fixed_totals", &fixed_totals);
  m.def("rms_step", &rms_step);
  m.def("softmax_backward", &softmax_backward);
}
