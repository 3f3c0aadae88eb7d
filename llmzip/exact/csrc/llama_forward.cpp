// llama.py's ExactLlama.forward for a few positions per row (decoding steps: attention reads the
// integer cache directly), all blocks in one call. A step of a few rows costs little more than
// streaming the weights once; run from Python, each block's twenty calls and their glue cost as
// much again. The same kernels are called on the same tensors in the same order, so the logits
// and the cache are the same bits, and llama.py stays the definition (tests compare both).

#include "kernels.h"

#include <ATen/ops/add.h>
#include <ATen/ops/mul.h>

namespace llmzip {

// The cache's tensors for one layer, [rows, kv_heads, slots(, head_dim)], as kvcache.py holds them.
struct CacheLayer {
  at::Tensor keys, key_scales, values, value_scales;
};

at::Tensor llama_forward(at::Tensor x, std::vector<at::Tensor> packed, std::vector<at::Tensor> scales,
                            at::Tensor cos, at::Tensor sin, at::Tensor sink_cos, at::Tensor sink_sin,
                            std::vector<at::Tensor> cache, int64_t first_slot, int64_t held,
                            at::Tensor positions, int64_t window, int64_t sinks, std::vector<int64_t> sizes,
                            std::vector<double> levels, double eps, double key_scale, double log2e,
                            std::vector<at::Tensor> down_factors, int64_t down_sylvester) {
  // sizes: heads, kv_heads, head_dim; levels: keys, queries, sink queries, values, the down
  // projection's input, activations, and the smallest scale (llama.py's and arithmetic.py's constants).
  const int64_t heads = sizes.at(0), kv_heads = sizes.at(1), dim = sizes.at(2), groups = heads / kv_heads;
  const double key_levels = levels.at(0), query_levels = levels.at(1), sink_query_levels = levels.at(2),
               value_levels = levels.at(3), down_levels = levels.at(4), activation_levels = levels.at(5),
               tiny = levels.at(6);
  const int64_t rows = x.size(0), length = x.size(1), layers = static_cast<int64_t>(packed.size() - 1) / 4;
  TORCH_CHECK(packed.size() == scales.size() && cache.size() == 4 && packed.size() == static_cast<size_t>(4 * layers + 1));
  const bool pinned = sink_cos.numel() > 0;
  const auto project = [&](size_t i, const std::vector<at::Tensor>& input) {
    return linear(input[0], packed[i], scales[i].size(0), scales[i], input[1]);
  };
  const at::Tensor none = at::empty({0}, x.options());
  for (int64_t i = 0; i < layers; ++i) {
    const CacheLayer layer{cache[0][i], cache[1][i], cache[2][i], cache[3][i]};
    const auto h = quantize(x, activation_levels, tiny, eps, std::nullopt);
    const auto qkv = project(4 * i, h).view({rows, length, heads + 2 * kv_heads, dim});
    const auto k = rotary_quantize(qkv.narrow(2, heads, kv_heads), cos, sin, key_levels, tiny, none);
    const auto v = quantize(qkv.narrow(2, heads + kv_heads, kv_heads).transpose(1, 2), value_levels, tiny, -1.0,
                            std::nullopt);
    layer.keys.narrow(2, first_slot, length).copy_(k[0]);  // kvcache.write
    layer.key_scales.narrow(2, first_slot, length).copy_(at::mul(k[1], key_scale).squeeze(-1));
    layer.values.narrow(2, first_slot, length).copy_(v[0]);
    layer.value_scales.narrow(2, first_slot, length).copy_(v[1].squeeze(-1));
    const auto q = rotary_quantize(qkv.narrow(2, 0, heads), cos, sin, query_levels, tiny, none);
    const int64_t queries = groups * length;
    const at::Tensor sink_q =
        pinned ? rotary_quantize(qkv.narrow(2, 0, heads), sink_cos, sink_sin, sink_query_levels, tiny, q[1].contiguous())[0]
                     .reshape({rows * kv_heads, queries, dim})
               : none;
    const auto o = attention_cached(
        q[0].reshape({rows * kv_heads, queries, dim}), q[1].reshape({rows * kv_heads, queries, 1}),
        layer.keys.narrow(2, 0, held).reshape({rows * kv_heads, held, dim}),
        layer.key_scales.narrow(2, 0, held).reshape({rows * kv_heads, 1, held}),
        layer.values.narrow(2, 0, held).reshape({rows * kv_heads, held, dim}),
        layer.value_scales.narrow(2, 0, held).reshape({rows * kv_heads, 1, held}), positions, window, sinks, sink_q);
    const auto heads_out = o.view({rows, kv_heads, groups, length, dim}).permute({0, 3, 1, 2, 4});
    const auto x_mid = at::add(x, project(4 * i + 1, quantize(heads_out.reshape({rows, length, heads * dim}),
                                                       activation_levels, tiny, -1.0, std::nullopt)));
    const auto gate_up = project(4 * i + 2, quantize(x_mid, activation_levels, tiny, eps, std::nullopt)).chunk(2, -1);
    const auto a = quantize_rotated(silu_mul(gate_up[0], gate_up[1], log2e), down_levels, activation_levels,
                                    down_factors, down_sylvester, tiny);
    x = at::add(x_mid, project(4 * i + 3, a));
  }
  return project(4 * layers, quantize(x, activation_levels, tiny, eps, std::nullopt));
}

}  // namespace llmzip
