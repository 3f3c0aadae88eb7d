// Elementwise pipelines: quantization (with RMSNorm), the rotary embedding, softmax weights, SiLU.

#include "kernels.h"

namespace llmzip {

// arithmetic.quantize (and with eps >= 0, arithmetic.quantize_normed) over the last axis: q and per row
// the scale, or the norm's factor 1 / sqrt(mean(q**2) + eps / scale**2) in the torch code's
// operations: its divisions by a tensor are a reciprocal and a product (Tensor.__rdiv__), the
// mean is float32 or, where the squares may pass 2**24, float64; std::sqrt is correctly rounded.
// float64 x may be quantized in place: q given as x (contiguous).
std::vector<at::Tensor> quantize(at::Tensor x, double levels, double tiny, double eps,
                                    std::optional<at::Tensor> into) {
  auto xc = x.contiguous();
  const int64_t n = xc.size(-1), rows = xc.numel() / n;
  auto q = into.has_value() ? *into : at::empty_like(xc);
  TORCH_CHECK(q.is_contiguous() && q.sizes() == xc.sizes() && q.scalar_type() == xc.scalar_type());
  auto sizes = xc.sizes().vec();
  sizes.back() = 1;
  auto scale = at::empty(sizes, xc.options());
  if (xc.scalar_type() == at::kDouble) {  // weights being learned: no norm
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
std::vector<at::Tensor> rotary_quantize(at::Tensor x, at::Tensor cos, at::Tensor sin, double levels,
                                           double tiny, at::Tensor given) {
  auto cc = cos.contiguous(), sc = sin.contiguous();
  const int64_t rows = x.size(0), length = x.size(1), heads = x.size(2), dim = x.size(3), half = dim / 2;
  TORCH_CHECK(x.dim() == 4 && x.stride(3) == 1 && dim % 2 == 0 && dim <= 1024 && cc.numel() == length * dim);
  auto q = at::empty({rows, heads, length, dim}, x.options());
  auto scale = given.numel() ? given.contiguous() : at::empty({rows, heads, length, 1}, x.options());
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
void softmax_weights_into(at::Tensor logits, at::Tensor out, double log2e) {
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
at::Tensor silu_mul(at::Tensor gate, at::Tensor up, double log2e) {
  auto g = gate.contiguous(), u = up.contiguous();
  auto out = at::empty_like(g);
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

}  // namespace llmzip
