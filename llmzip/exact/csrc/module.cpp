// The kernels as the Python module that exact/build.py compiles and loads.
#include <torch/python.h>

#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("quantize", &llmzip::quantize);
  m.def("rotary_quantize", &llmzip::rotary_quantize);
  m.def("hadamard", &llmzip::hadamard);
  m.def("rotate_weights", &llmzip::rotate_weights);
  m.def("quantize_rotated", &llmzip::quantize_rotated);
  m.def("pack_weight", &llmzip::pack_weight);
  m.def("linear", &llmzip::linear);
  m.def("softmax_weights_into", &llmzip::softmax_weights_into);
  m.def("silu_mul", &llmzip::silu_mul);
  m.def("attention_weights", &llmzip::attention_weights);
  m.def("attention_cached", &llmzip::attention_cached);
  m.def("llama_forward", &llmzip::llama_forward);
  m.def("bias_apply", &llmzip::bias_apply);
  m.def("bias_learn", &llmzip::bias_learn);
  m.def("fixed_totals", &llmzip::fixed_totals);
  m.def("logits_gradient", &llmzip::logits_gradient);
  m.def("quantize_columns", &llmzip::quantize_columns);
  m.def("rms_step", &llmzip::rms_step);
  m.def("softmax_backward", &llmzip::softmax_backward);
}
