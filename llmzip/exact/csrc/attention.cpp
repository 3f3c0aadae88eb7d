// Integer attention: weights from integer scores, and attention read straight from the integer cache.

#include "kernels.h"

namespace llmzip {

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


// arithmetic.attention's weights: from integer scores [B, Q, T] (B = rows * kv heads), key and value
// scales [B, 1, T], query scales [B, Q, 1] and each query's position [Q] (keys after it, and
// `window` or more before it except the first `sinks`, are not attended), the integer weights
// [B, Q, T] and the output factor [B, Q, 1].
std::vector<at::Tensor> attention_weights(at::Tensor scores, at::Tensor k_scale, at::Tensor q_scale,
                                             at::Tensor v_scale, at::Tensor positions, int64_t window,
                                             int64_t sinks) {
  auto s = scores.contiguous(), ks = k_scale.contiguous(), qs = q_scale.contiguous(), vs = v_scale.contiguous();
  auto pos = positions.contiguous();
  const int64_t batch = s.size(0), queries = s.size(1), keys = s.size(2);
  auto weights = at::zeros_like(s);
  auto factor = at::empty({batch, queries, 1}, s.options());
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
at::Tensor attention_cached_keys(at::Tensor q, at::Tensor q_scale, at::Tensor k, at::Tensor k_scale,
                                    at::Tensor v, at::Tensor v_scale, at::Tensor positions, int64_t window,
                                    int64_t sinks, at::Tensor sink_q) {
  auto qc = q.contiguous(), qs = q_scale.contiguous(), pos = positions.contiguous();
  auto sqc = sink_q.numel() ? sink_q.contiguous() : qc;
  TORCH_CHECK(sqc.sizes() == qc.sizes());
  const int64_t batch = qc.size(0), queries = qc.size(1), dim = qc.size(2), keys = k.size(1);
  TORCH_CHECK(k.stride(2) == 1 && v.stride(2) == 1 && k.stride(1) == dim && v.stride(1) == dim);
  TORCH_CHECK(k_scale.stride(2) == 1 && v_scale.stride(2) == 1);
  auto out = at::empty_like(qc);
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

at::Tensor attention_cached(at::Tensor q, at::Tensor q_scale, at::Tensor k, at::Tensor k_scale,
                               at::Tensor v, at::Tensor v_scale, at::Tensor positions, int64_t window,
                               int64_t sinks, at::Tensor sink_q) {
  TORCH_CHECK(k.scalar_type() == at::kChar || k.scalar_type() == at::kShort, "keys must be int8 or int16");
  if (k.scalar_type() == at::kChar)
    return attention_cached_keys<int8_t>(q, q_scale, k, k_scale, v, v_scale, positions, window, sinks, sink_q);
  return attention_cached_keys<int16_t>(q, q_scale, k, k_scale, v, v_scale, positions, window, sinks, sink_q);
}

}  // namespace llmzip
