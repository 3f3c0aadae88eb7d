// Fused CPU versions of arithmetic.py's pipelines and of the side models' integer steps: the same
// IEEE operations in the same order, and the same integer sums (int32 here, float32 below 2**24
// there), so the same bits, in one pass over memory instead of one pass per torch op. Compiled
// with -ffp-contract=off (no fused multiply-add), without -ffast-math and with OpenMP
// (at::parallel_for); explicit fused multiply-adds appear only where every product and sum is an
// integer below 2**24, exact either way. The Python code is the definition and the fallback, and
// the tests check that both agree bit for bit.
//
// This header holds what the sources share: the elementwise helpers, which keys a query sees,
// and every kernel's declaration, by source file (module.cpp binds them for Python).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#ifndef LLMZIP_EXP2_POLY
#error "compile through exact/arithmetic.kernels(), which passes the polynomial"
#endif

namespace llmzip {

// arithmetic.EXP2_POLY, lowest degree first, passed by exact/arithmetic.py as exact hexadecimal literals.
constexpr float kPoly[] = {LLMZIP_EXP2_POLY};
constexpr int kDegree = sizeof(kPoly) / sizeof(kPoly[0]) - 1;
constexpr int kLanes = 16;  // independent partial maxima, so that max over a row vectorises

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

// elementwise.cpp
std::vector<at::Tensor> quantize(at::Tensor x, double levels, double tiny, double eps,
                                    std::optional<at::Tensor> into);
std::vector<at::Tensor> rotary_quantize(at::Tensor x, at::Tensor cos, at::Tensor sin, double levels,
                                           double tiny, at::Tensor given);
void softmax_weights_into(at::Tensor logits, at::Tensor out, double log2e);
at::Tensor silu_mul(at::Tensor gate, at::Tensor up, double log2e);

// rotation.cpp
at::Tensor hadamard(at::Tensor x, std::vector<at::Tensor> factors, int64_t sylvester);
at::Tensor rotate_weights(at::Tensor w, at::Tensor out, double step, double factor,
                             std::vector<at::Tensor> factors, int64_t sylvester, bool columns);
std::vector<at::Tensor> quantize_rotated(at::Tensor x, double levels, double rotated_levels,
                                            std::vector<at::Tensor> factors, int64_t sylvester, double tiny);

// linear.cpp
at::Tensor pack_weight(at::Tensor weight);
at::Tensor linear(at::Tensor x, at::Tensor packed, int64_t n, at::Tensor scale, at::Tensor row_scale);

// attention.cpp
std::vector<at::Tensor> attention_weights(at::Tensor scores, at::Tensor k_scale, at::Tensor q_scale,
                                             at::Tensor v_scale, at::Tensor positions, int64_t window,
                                             int64_t sinks);
at::Tensor attention_cached(at::Tensor q, at::Tensor q_scale, at::Tensor k, at::Tensor k_scale,
                               at::Tensor v, at::Tensor v_scale, at::Tensor positions, int64_t window,
                               int64_t sinks, at::Tensor sink_q);

// llama_forward.cpp
at::Tensor llama_forward(at::Tensor x, std::vector<at::Tensor> packed, std::vector<at::Tensor> scales,
                            at::Tensor cos, at::Tensor sin, at::Tensor sink_cos, at::Tensor sink_sin,
                            std::vector<at::Tensor> cache, int64_t first_slot, int64_t held,
                            at::Tensor positions, int64_t window, int64_t sinks, std::vector<int64_t> sizes,
                            std::vector<double> levels, double eps, double key_scale, double log2e,
                            std::vector<at::Tensor> down_factors, int64_t down_sylvester);

// side.cpp
void bias_apply(at::Tensor weights, at::Tensor bias, at::Tensor multipliers, int64_t shift, int64_t low_step,
                double weight_scale, double output_scale, at::Tensor learning, at::Tensor pull, int64_t rate);
void bias_learn(at::Tensor pull, at::Tensor tokens, at::Tensor bias, int64_t rate, int64_t low,
                int64_t high);
void fixed_totals(at::Tensor weights, at::Tensor rows, double scale, at::Tensor out, at::Tensor totals);

// learning.cpp
at::Tensor logits_gradient(at::Tensor logits, at::Tensor targets, double unit, double log2e);
std::vector<at::Tensor> quantize_columns(at::Tensor x, double levels, double tiny, at::Tensor out);
void rms_step(at::Tensor integers, at::Tensor scale, at::Tensor mean_square, at::Tensor master,
              double decay, double keep, double unbias, double floor, double epsilon, double rate);
std::vector<at::Tensor> softmax_backward(at::Tensor scores, at::Tensor dp, at::Tensor k_scale,
                                            at::Tensor q_scale, at::Tensor v_scale, at::Tensor d_scale,
                                            at::Tensor dp_mean, at::Tensor positions, int64_t window,
                                            int64_t sinks, double levels, double tiny);

}  // namespace llmzip
