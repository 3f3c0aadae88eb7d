// Fused CPU versions of exact.py's elementwise pipelines: the same IEEE operations in the same
// order, so the same bits, in one pass over memory instead of one pass per torch op. Compiled
// with -ffp-contract=off (no fused multiply-add) and without -ffast-math; exact.py's torch code
// is the definition and the fallback, and tests/test_exact.py checks that both agree bit for bit.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#ifndef LLMZIP_EXP2_POLY
#error "compile through exact.kernels(), which passes the polynomial"
#endif

namespace {

// exact.EXP2_POLY, lowest degree first, passed by exact.py as exact hexadecimal literals.
constexpr float kPoly[] = {LLMZIP_EXP2_POLY};
constexpr int kDegree = sizeof(kPoly) / sizeof(kPoly[0]) - 1;
constexpr int kLanes = 16;  // independent partial maxima, so that max over a row vectorises
constexpr int64_t kSlice = 32;  // value dimensions summed at once in attention_cached

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
inline float row_max(const float* x, int64_t n) {
  float lanes[kLanes];
  for (int l = 0; l < kLanes; ++l) lanes[l] = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] = std::max(lanes[l], x[j + l]);
  float top = -std::numeric_limits<float>::infinity();
  for (int l = 0; l < kLanes; ++l) top = std::max(top, lanes[l]);
  for (; j < n; ++j) top = std::max(top, x[j]);
  return top;
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

// exact.quantize over the last axis: per row, scale = max(max|x|, tiny) / levels and q = round(x / scale).
std::vector<torch::Tensor> quantize(torch::Tensor x, double levels, double tiny) {
  auto xc = x.contiguous();
  const int64_t n = xc.size(-1), rows = xc.numel() / n;
  auto q = torch::empty_like(xc);
  auto sizes = xc.sizes().vec();
  sizes.back() = 1;
  auto scale = torch::empty(sizes, xc.options());
  const float* in = xc.data_ptr<float>();
  float* qp = q.data_ptr<float>();
  float* sp = scale.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = in + r * n;
      float lanes[kLanes] = {};
      int64_t j = 0;
      for (; j + kLanes <= n; j += kLanes)
        for (int l = 0; l < kLanes; ++l) lanes[l] = std::max(lanes[l], std::fabs(xr[j + l]));
      float top = 0.0f;
      for (int l = 0; l < kLanes; ++l) top = std::max(top, lanes[l]);
      for (; j < n; ++j) top = std::max(top, std::fabs(xr[j]));
      const float s = std::max(top, static_cast<float>(tiny)) / static_cast<float>(levels);
      sp[r] = s;
      float* out = qp + r * n;
      for (j = 0; j < n; ++j) out[j] = std::nearbyint(xr[j] / s);
    }
  });
  return {q, scale};
}

// exact.softmax_weights written as float64 into out[:, :n] (the coder reads float64 rows).
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

// exact.silu(gate) * up.
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

// exact.attention's weights for one query: from its integer scores acc[0..n) (keys 0..n-1
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

// exact.attention's weights: from integer scores [B, Q, T] (B = rows * kv heads), key and value
// scales [B, 1, T], query scales [B, Q, 1] and each query's position [Q] (keys after it, and
// `window` or more before it, are not attended), the integer weights [B, Q, T] and the output
// factor [B, Q, 1].
std::vector<torch::Tensor> attention_weights(torch::Tensor scores, torch::Tensor k_scale, torch::Tensor q_scale,
                                             torch::Tensor v_scale, torch::Tensor positions, int64_t window) {
  auto s = scores.contiguous(), ks = k_scale.contiguous(), qs = q_scale.contiguous(), vs = v_scale.contiguous();
  auto pos = positions.contiguous();
  const int64_t batch = s.size(0), queries = s.size(1), keys = s.size(2);
  auto weights = torch::empty_like(s);
  auto factor = torch::empty({batch, queries, 1}, s.options());
  const float* sp = s.data_ptr<float>();
  const float* ksp = ks.data_ptr<float>();
  const float* qsp = qs.data_ptr<float>();
  const float* vsp = vs.data_ptr<float>();
  const int64_t* pp = pos.data_ptr<int64_t>();
  float* wp = weights.data_ptr<float>();
  float* fp = factor.data_ptr<float>();
  at::parallel_for(0, batch * queries, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scaled(keys), e(keys);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / queries, i = row % queries;
      const int64_t n = std::min(pp[i], keys - 1) + 1, first = std::clamp(pp[i] - window + 1, int64_t{0}, n);
      float* w = wp + row * keys;
      fp[row] = query_weights(sp + row * keys + first, ksp + b * keys + first, vsp + b * keys + first, qsp[row],
                              n - first, w + first, scaled.data(), e.data());
      std::fill(w, w + first, 0.0f);
      std::fill(w + n, w + keys, 0.0f);
    }
  });
  return {weights, factor};
}

// sum of a[d] * b[d] over d < dim, unrolled when Dim gives it: with |a|, |b| <= 511 and
// dim <= 64, |sum| < 2**24 is exact, and the integer float32 products would give.
template <int64_t Dim>
inline int32_t dot(const int16_t* a, const int16_t* b, int64_t dim) {
  int32_t sum = 0;
  for (int64_t d = 0; d < (Dim ? Dim : dim); ++d) sum += static_cast<int32_t>(a[d]) * static_cast<int32_t>(b[d]);
  return sum;
}

// out[d] = factor * sum_j w[j] * v[j * dim + d] for d < Width, the sums held in registers. The
// weights are integers summing to about 2**16 and |v| <= 127: every partial sum is an integer
// below 2**24, exact in float32.
template <int64_t Width>
inline void weighted_slice(const float* w, const int8_t* v, int64_t n, int64_t dim, float factor, float* out) {
  float sums[Width] = {};
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < Width; ++d) sums[d] += w[j] * static_cast<float>(v[j * dim + d]);
  for (int64_t d = 0; d < Width; ++d) out[d] = sums[d] * factor;
}

// exact.attention with the integer cache read directly (int16 keys, int8 values: a quarter and
// an eighth of float32's memory traffic, which bounds a decoding step): q [B, Q, D] integers,
// q_scale [B, Q, 1], k [B, T, D] int16, k_scale [B, 1, T], v [B, T, D] int8, v_scale [B, 1, T]
// (B may be strided: rows of a larger cache), positions [Q] and window as in attention_weights.
// The dot products in int32 and the weighted sums are the integers the float32 products give,
// so the output has their bits.
torch::Tensor attention_cached(torch::Tensor q, torch::Tensor q_scale, torch::Tensor k, torch::Tensor k_scale,
                               torch::Tensor v, torch::Tensor v_scale, torch::Tensor positions, int64_t window) {
  auto qc = q.contiguous(), qs = q_scale.contiguous(), pos = positions.contiguous();
  const int64_t batch = qc.size(0), queries = qc.size(1), dim = qc.size(2), keys = k.size(1);
  TORCH_CHECK(k.stride(2) == 1 && v.stride(2) == 1 && k.stride(1) == dim && v.stride(1) == dim);
  TORCH_CHECK(k_scale.stride(2) == 1 && v_scale.stride(2) == 1);
  auto out = torch::empty_like(qc);
  const float* qp = qc.data_ptr<float>();
  const float* qsp = qs.data_ptr<float>();
  const int16_t* kp = k.data_ptr<int16_t>();
  const int8_t* vp = v.data_ptr<int8_t>();
  const float* ksp = k_scale.data_ptr<float>();
  const float* vsp = v_scale.data_ptr<float>();
  const int64_t* pp = pos.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const int64_t k_stride = k.stride(0), v_stride = v.stride(0), ks_stride = k_scale.stride(0),
                vs_stride = v_scale.stride(0);
  // One (row, key/value head) at a time, with all its queries: each key is read once for all.
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(queries * keys), w(keys), scaled(keys), e(keys);
    std::vector<int16_t> qi(queries * dim);  // |q| <= 511: int16 products summed in int32
    int64_t longest = 0;
    for (int64_t i = 0; i < queries; ++i) longest = std::max(longest, std::min(pp[i], keys - 1) + 1);
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t d = 0; d < queries * dim; ++d) qi[d] = static_cast<int16_t>(qp[b * queries * dim + d]);
      const int16_t* kb = kp + b * k_stride;
      for (int64_t j = 0; j < longest; ++j) {
        const int16_t* kr = kb + j * dim;
        for (int64_t i = 0; i < queries; ++i) {
          const int16_t* qr = qi.data() + i * dim;
          acc[i * keys + j] = static_cast<float>(dim == 64 ? dot<64>(qr, kr, dim) : dot<0>(qr, kr, dim));
        }
      }
      const int8_t* vb = vp + b * v_stride;
      for (int64_t i = 0; i < queries; ++i) {
        const int64_t row = b * queries + i, n = std::min(pp[i], keys - 1) + 1;
        const int64_t first = std::clamp(pp[i] - window + 1, int64_t{0}, n), m = n - first;
        const float factor = query_weights(acc.data() + i * keys + first, ksp + b * ks_stride + first,
                                           vsp + b * vs_stride + first, qsp[row], m, w.data(), scaled.data(), e.data());
        const int8_t* vf = vb + first * dim;
        float* o = op + row * dim;
        int64_t d0 = 0;
        for (; d0 + kSlice <= dim; d0 += kSlice) weighted_slice<kSlice>(w.data(), vf + d0, m, dim, factor, o + d0);
        for (; d0 < dim; ++d0) weighted_slice<1>(w.data(), vf + d0, m, dim, factor, o + d0);
      }
    }
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("quantize", &quantize);
  m.def("softmax_weights_into", &softmax_weights_into);
  m.def("silu_mul", &silu_mul);
  m.def("attention_weights", &attention_weights);
  m.def("attention_cached", &attention_cached);
}
