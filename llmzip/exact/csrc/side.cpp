// The side models' integer steps: the adaptive bias (side/bias.py) and fixed-point totals (side/match.py).

#include <mutex>

#include "kernels.h"

namespace llmzip {

// bias.AdaptiveBias.apply over rows: weights [R, V] float64 (any row stride) rewritten in place
// as floor(w * weight_scale) * multipliers[(bias >> shift) - low_step] * output_scale; for the
// rows listed in `learning`, pull[j] += products[j] * rate // sum(products) is added while the
// row is in cache (the integer products are the rewritten weights / output_scale, exactly).
// Every step is exact and the sums are of integers, so the bits are numpy's in any order.
void bias_apply(at::Tensor weights, at::Tensor bias, at::Tensor multipliers, int64_t shift, int64_t low_step,
                double weight_scale, double output_scale, at::Tensor learning, at::Tensor pull, int64_t rate) {
  TORCH_CHECK(weights.dim() == 2 && weights.stride(1) == 1 && weights.scalar_type() == at::kDouble);
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
void bias_learn(at::Tensor pull, at::Tensor tokens, at::Tensor bias, int64_t rate, int64_t low,
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
void fixed_totals(at::Tensor weights, at::Tensor rows, double scale, at::Tensor out, at::Tensor totals) {
  TORCH_CHECK(weights.dim() == 2 && weights.stride(1) == 1 && weights.scalar_type() == at::kDouble);
  auto r = rows.contiguous();
  const int64_t n = weights.size(1), stride = weights.stride(0), listed = r.numel();
  const bool keep = out.numel() > 0;
  TORCH_CHECK(totals.is_contiguous() && totals.numel() == listed);
  TORCH_CHECK(!keep || (out.dim() == 2 && out.stride(1) == 1 && out.size(1) == n && out.scalar_type() == at::kDouble));
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

}  // namespace llmzip
