// Learning's steps (exact/learning.py): the logits' gradient, weight gradients' quantization per
// output channel, the RMS update and the softmax's backward.

#include "kernels.h"

namespace llmzip {

// learning.logits_gradient: q - [y = x] per row of float32 logits [M, V], q the softmax weights
// (arithmetic.softmax_weights) rounded to fixed point over `unit` and divided by their exact
// integer sum; rows whose target [M] is -1 are 0. Returned float64 [M, V].
at::Tensor logits_gradient(at::Tensor logits, at::Tensor targets, double unit, double log2e) {
  auto z = logits.contiguous(), t = targets.contiguous();
  const int64_t n = z.size(-1), rows = z.numel() / n;
  TORCH_CHECK(z.scalar_type() == at::kFloat && t.scalar_type() == at::kLong && t.numel() == rows);
  TORCH_CHECK(rows == 0 || t.max().item<int64_t>() < n, "a target beyond the logits");
  auto out = at::empty({rows, n}, z.options().dtype(at::kDouble));
  const float* in = z.data_ptr<float>();
  const int64_t* target = t.data_ptr<int64_t>();
  double* o = out.data_ptr<double>();
  const float c = static_cast<float>(log2e);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      double* q = o + r * n;
      if (target[r] < 0) {
        std::fill(q, q + n, 0.0);
        continue;
      }
      const float* x = in + r * n;
      const float top = row_max(x, n);
      for (int64_t j = 0; j < n; ++j) q[j] = std::nearbyint(static_cast<double>(exp2_neg((top - x[j]) * c)) * unit);
      const double total = integer_sum(q, n);
      for (int64_t j = 0; j < n; ++j) q[j] = q[j] / total;
      q[target[r]] -= 1.0;
    }
  });
  return out;
}

// arithmetic.quantize along the first axis of a float64 matrix x [M, N], a scale per column
// [1, N]: q = round(x / scale) into `out` (contiguous, x's shape; may be x).
std::vector<at::Tensor> quantize_columns(at::Tensor x, double levels, double tiny, at::Tensor out) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kDouble && out.is_contiguous() && out.sizes() == x.sizes());
  auto xc = x.contiguous();
  const int64_t rows = xc.size(0), n = xc.size(1);
  auto scale = at::empty({1, n}, xc.options());
  const double* in = xc.data_ptr<double>();
  double *qp = out.data_ptr<double>(), *sp = scale.data_ptr<double>();
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {  // columns: a pass down the rows per range
    for (int64_t j = begin; j < end; ++j) sp[j] = 0.0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = begin; j < end; ++j) sp[j] = std::max(sp[j], std::fabs(in[r * n + j]));
    for (int64_t j = begin; j < end; ++j) sp[j] = std::max(sp[j], tiny) / levels;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = begin; j < end; ++j) qp[r * n + j] = std::nearbyint(in[r * n + j] / sp[j]);
  });
  return {out, scale};
}

// learning.rms_step in place, one pass: float64 tensors of one projection (contiguous), the
// gradient as integers [N, K] times a scale per row [N, 1].
void rms_step(at::Tensor integers, at::Tensor scale, at::Tensor mean_square, at::Tensor master,
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
std::vector<at::Tensor> softmax_backward(at::Tensor scores, at::Tensor dp, at::Tensor k_scale,
                                            at::Tensor q_scale, at::Tensor v_scale, at::Tensor d_scale,
                                            at::Tensor dp_mean, at::Tensor positions, int64_t window,
                                            int64_t sinks, double levels, double tiny) {
  TORCH_CHECK(scores.is_contiguous() && dp.is_contiguous() && scores.sizes() == dp.sizes());
  TORCH_CHECK(scores.scalar_type() == at::kDouble && dp.scalar_type() == at::kDouble);
  auto ks = k_scale.contiguous(), qs = q_scale.contiguous(), vs = v_scale.contiguous();
  auto dsc = d_scale.contiguous(), mean = dp_mean.contiguous(), pos = positions.contiguous();
  const int64_t keys = scores.size(-1), queries = scores.size(-2), batch = scores.numel() / (queries * keys);
  TORCH_CHECK(ks.numel() == batch * keys && vs.numel() == batch * keys && qs.numel() == batch * queries);
  TORCH_CHECK(dsc.numel() == batch * queries && mean.numel() == batch * queries && pos.numel() == queries);
  auto a = at::empty_like(scores);
  auto sizes = scores.sizes().vec();
  sizes.back() = 1;
  auto a_scale = at::empty(sizes, scores.options());
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

}  // namespace llmzip
