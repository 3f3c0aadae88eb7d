// Hadamard rotations: of activations, of weights as they are prepared, and quantize-rotate-quantize.

#include "kernels.h"

namespace llmzip {

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

  Hadamard(const std::vector<at::Tensor>& factors, int64_t sylvester) : sylvester(sylvester) {
    for (const auto& f : factors) {
      auto fc = f.to(at::kDouble).contiguous();
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
at::Tensor hadamard_rows(at::Tensor xc, const std::vector<at::Tensor>& factors, int64_t sylvester) {
  const int64_t n = xc.size(-1), rows = xc.numel() / n;
  const Hadamard<T> h(factors, sylvester);
  auto out = at::empty_like(xc);
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
at::Tensor rotate_weights(at::Tensor w, at::Tensor out, double step, double factor,
                             std::vector<at::Tensor> factors, int64_t sylvester, bool columns) {
  auto wc = w.contiguous();
  TORCH_CHECK(!columns || wc.dim() == 2);
  TORCH_CHECK(out.is_contiguous() && out.sizes() == wc.sizes() && out.scalar_type() == at::kDouble);
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
at::Tensor hadamard(at::Tensor x, std::vector<at::Tensor> factors, int64_t sylvester) {
  auto xc = x.contiguous();
  if (xc.scalar_type() == at::kDouble) return hadamard_rows<double>(xc, factors, sylvester);
  return hadamard_rows<float>(xc, factors, sylvester);
}

// arithmetic.quantize_rotated: per row, q, s = quantize(x, levels); r, t = quantize(q @ H, rotated_levels); r and t * s.
std::vector<at::Tensor> quantize_rotated(at::Tensor x, double levels, double rotated_levels,
                                            std::vector<at::Tensor> factors, int64_t sylvester, double tiny) {
  auto xc = x.contiguous();
  const int64_t n = xc.size(-1), rows = xc.numel() / n;
  const Hadamard<float> h(factors, sylvester);
  auto r = at::empty_like(xc);
  auto sizes = xc.sizes().vec();
  sizes.back() = 1;
  auto scale = at::empty(sizes, xc.options());
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

}  // namespace llmzip
