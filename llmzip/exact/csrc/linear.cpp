// Exact integer products of the linear layers, on packed 9-bit weights.

#include "kernels.h"

namespace llmzip {

constexpr int64_t kChannels = 16;  // output channels of one packed weight block in `linear`
constexpr int64_t kRows = 6;  // rows of one register tile in `linear`: 12 sums, 2 weights, 1 broadcast
constexpr int64_t kCompactRows = 5;  // with compact weights: 10 sums, and 3 constants to widen them
constexpr int64_t kCompactTiles = 2;  // more rows than these tiles hold widen each block once instead

// Integer weights for `linear`: [N, K] int16 reordered as [ceil(N/16), ceil(K/2), 16, 2], so that
// one 256-bit load holds two neighbouring k of eight output channels (zeros pad N and K). Weights
// in [-256, 255] (every real model's: K >= 515 leaves at most 229 levels) are stored compact, as
// w = 2a + b with a int8 and b one bit: each pair of k of 16 channels in kPairBytes, the 32 a and
// then a 32-bit word of the b (bit j for byte j). A decoding step of a few rows streams every
// weight from memory, and its time is their bytes: 9 bits instead of 16 (SmolLM2: 151 MB a step
// instead of 269). `linear` widens them back a pair at a time: interleaving the bytes a with bytes
// that hold b in their top bit makes int16 lanes 256a + 128b = 128w in two instructions, in the
// lane order of the wide layout when the a are stored as compact_lane lists them.
constexpr int64_t kPairBytes = 2 * kChannels + 4;
constexpr int64_t kPrefetch = 1024;  // bytes ahead of the pair read: weights stream from memory
// Which of the wide layout's 32 lanes (channel c, k j at 2c + j) the compact layout's byte i holds:
// unpacking the low and high bytes of each 128-bit half gives lanes 0..15 and 16..31.
constexpr int64_t compact_lane(int64_t i) { return (i / 8 % 2) * 16 + (i / 16) * 8 + i % 8; }

at::Tensor pack_weight(at::Tensor weight) {
  auto w = weight.to(at::kShort).contiguous();
  const int64_t n = w.size(0), k = w.size(1), pairs = (k + 1) / 2, blocks = (n + kChannels - 1) / kChannels;
  auto wide = at::zeros({blocks, pairs, kChannels, 2}, at::kShort);
  const int16_t* src = w.data_ptr<int16_t>();
  int16_t* dst = wide.data_ptr<int16_t>();
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      for (int64_t c = b * kChannels; c < std::min(n, (b + 1) * kChannels); ++c)
        for (int64_t j = 0; j < k; ++j)
          dst[((b * pairs + j / 2) * kChannels + c % kChannels) * 2 + j % 2] = src[c * k + j];
  });
#if defined(__AVX2__)
  const bool fits = w.numel() > 0 && w.min().item<int16_t>() >= -256 && w.max().item<int16_t>() <= 255;
#else
  const bool fits = false;  // linear_tile widens compact weights in AVX2 registers only
#endif
  if (!fits) return wide;
  auto compact = at::empty({blocks, pairs, kPairBytes}, at::kChar);
  int8_t* out = compact.data_ptr<int8_t>();
  at::parallel_for(0, blocks * pairs, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int16_t* lanes = dst + i * 2 * kChannels;
      int8_t* bytes = out + i * kPairBytes;
      uint32_t bits = 0;
      for (int64_t l = 0; l < 2 * kChannels; ++l) {
        const int16_t w = lanes[compact_lane(l)];
        bytes[l] = static_cast<int8_t>(w >> 1);  // floor(w / 2)
        bits |= static_cast<uint32_t>(w & 1) << l;
      }
      std::memcpy(bytes + 2 * kChannels, &bits, sizeof bits);
    }
  });
  return compact;
}

#if defined(__AVX2__)
// The 32 weights of pair p of a block (two k of 16 channels) as int16 lanes: wide ones loaded,
// compact ones widened from 2a + b.
inline void load_pair(const int16_t* w, int64_t p, __m256i& w0, __m256i& w1) {
  w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + p * 2 * kChannels));
  w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + p * 2 * kChannels + kChannels));
}

// The 32 compact weights of pair p as int16 lanes 128w = 256a + 128b: the bytes a interleaved with
// bytes whose top bit is b (bit j of the pair's word, spread to byte j).
inline void load_pair(const int8_t* w, int64_t p, __m256i& w0, __m256i& w1) {
  const int8_t* bytes = w + p * kPairBytes;
  _mm_prefetch(reinterpret_cast<const char*>(bytes) + kPrefetch, _MM_HINT_T0);
  const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes));
  int32_t word;
  std::memcpy(&word, bytes + 2 * kChannels, sizeof word);
  const __m256i spread = _mm256_shuffle_epi8(  // byte j holds the word's byte j / 8
      _mm256_set1_epi32(word), _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2,
                                                2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i bit = _mm256_set1_epi64x(0x8040201008040201);  // byte j tests bit j % 8
  const __m256i b = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(-128));
  w0 = _mm256_unpacklo_epi8(b, a);
  w1 = _mm256_unpackhi_epi8(b, a);
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
    w0 = _mm256_srai_epi16(w0, 7);
    w1 = _mm256_srai_epi16(w1, 7);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + p * 2 * kChannels), w0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + p * 2 * kChannels + kChannels), w1);
  }
#endif
}

// Rows x[0..Rows) (int16, k pairs each, row stride lda) times one block of 16 packed channels
// (int16, or compact: int8 and bits): int16 products summed in int32, exact (|x| <= 511,
// |w| < 2**15 / 2, K * |x| * |w| < 2**31). Compact weights come as 128w: their sums are taken
// `fold` pairs at a time (few enough to stay in int32) and divided by 128, exactly.
template <int Rows, typename Weight>
inline void linear_tile(const int16_t* x, int64_t lda, const Weight* w, int64_t pairs, int64_t fold, int32_t* acc) {
#if defined(__AVX2__)
  constexpr bool kCompact = std::is_same_v<Weight, int8_t>;
  __m256i totals[Rows][2], sums[Rows][2];
  for (int r = 0; r < Rows; ++r) totals[r][0] = totals[r][1] = _mm256_setzero_si256();
  for (int64_t first = 0; first < pairs; first += kCompact ? fold : pairs) {
    for (int r = 0; r < Rows; ++r) sums[r][0] = sums[r][1] = _mm256_setzero_si256();
    const int64_t last = kCompact ? std::min(pairs, first + fold) : pairs;
    for (int64_t p = first; p < last; ++p) {
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
    if constexpr (!kCompact) {  // one pass: the sums are the products
      std::copy(&sums[0][0], &sums[0][0] + 2 * Rows, &totals[0][0]);
      break;
    }
    for (int r = 0; r < Rows; ++r)
      for (int h = 0; h < 2; ++h) totals[r][h] = _mm256_add_epi32(totals[r][h], _mm256_srai_epi32(sums[r][h], 7));
  }
  for (int r = 0; r < Rows; ++r) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + r * kChannels), totals[r][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + r * kChannels + 8), totals[r][1]);
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
at::Tensor linear(at::Tensor x, at::Tensor packed, int64_t n, at::Tensor scale, at::Tensor row_scale) {
  auto xc = x.contiguous(), sc = scale.contiguous(), rs = row_scale.contiguous();
  const int64_t k = xc.size(-1), m = xc.numel() / k, blocks = packed.size(0), pairs = packed.size(1);
  const bool compact = packed.scalar_type() == at::kChar;
  TORCH_CHECK(packed.size(2) == (compact ? kPairBytes : kChannels) && 2 * pairs >= k && blocks * kChannels >= n &&
              rs.numel() == m);
  auto sizes = xc.sizes().vec();
  sizes.back() = n;
  auto out = at::empty(sizes, xc.options());
  std::vector<int16_t> xi(m * 2 * pairs, 0);  // |x| <= 511
  const float* xp = xc.data_ptr<float>();
  int32_t largest = 1;
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < k; ++j) {
      xi[r * 2 * pairs + j] = static_cast<int16_t>(xp[r * k + j]);
      largest = std::max(largest, std::abs(static_cast<int32_t>(xi[r * 2 * pairs + j])));
    }
  // Compact weights' pairs summed before dividing by 128: |2 * x * 128w| <= 2**16 * |x| each.
  const int64_t fold = compact ? std::max<int64_t>(1, std::numeric_limits<int32_t>::max() / (int64_t{1} << 16) / largest)
                               : pairs;
  const int16_t* wp = compact ? nullptr : packed.data_ptr<int16_t>();
  const int8_t* cp = compact ? packed.data_ptr<int8_t>() : nullptr;
  const float* scp = sc.data_ptr<float>();
  const float* rsp = rs.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> acc(kRows * kChannels);
    const auto tile = [&](int64_t rows, const int16_t* xr, const auto* w) {
      switch (rows) {
        case 6: linear_tile<6>(xr, 2 * pairs, w, pairs, fold, acc.data()); break;
        case 5: linear_tile<5>(xr, 2 * pairs, w, pairs, fold, acc.data()); break;
        case 4: linear_tile<4>(xr, 2 * pairs, w, pairs, fold, acc.data()); break;
        case 3: linear_tile<3>(xr, 2 * pairs, w, pairs, fold, acc.data()); break;
        case 2: linear_tile<2>(xr, 2 * pairs, w, pairs, fold, acc.data()); break;
        default: linear_tile<1>(xr, 2 * pairs, w, pairs, fold, acc.data()); break;
      }
    };
    std::vector<int16_t> widened(compact && m > kCompactTiles * kCompactRows ? pairs * 2 * kChannels : 0);
    const int64_t tile_rows = compact && widened.empty() ? kCompactRows : kRows;
    for (int64_t b = begin; b < end; ++b) {
      const int16_t* w = compact ? nullptr : wp + b * pairs * 2 * kChannels;
      const int8_t* w8 = compact ? cp + b * pairs * kPairBytes : nullptr;
      if (!widened.empty()) {
        widen_block(w8, pairs, widened.data());
        w = widened.data();
      }
      const int64_t c0 = b * kChannels, width = std::min(kChannels, n - c0);
      for (int64_t r0 = 0; r0 < m; r0 += tile_rows) {
        const int64_t rows = std::min(tile_rows, m - r0);
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

}  // namespace llmzip
