"""The exact predictor's models: probabilities that are a function of the weights and the token
history alone, the same bits on every machine.

- `arithmetic`: the operations everything here is written in (integer products, correctly
  rounded elementwise steps in a fixed order, llmzip's own exp and square root), with the
  fused CPU kernels of `csrc/` (built by `build`) beside their torch definitions;
- `llama`, `gemma3`: the architectures, prepared once from a checkpoint (`prepared`), with
  their integer key/value cache (`kvcache`);
- `learning`: the weights' updates as they code (dynamic evaluation), in the same arithmetic.
"""
