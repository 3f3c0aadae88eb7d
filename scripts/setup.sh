#!/usr/bin/env bash
# Install llmzip with Ray, its test tools and the benchmarks' baselines and plots into .venv (idempotent),
# then build the fused kernels and fetch and prepare the default model, once, rather than on first use;
# with --tests, also the other built-in model, which the tests decode.
# torch goes first and pinned: torch==2.13.0 is a local CPU build here, while a looser spec can
# pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[test,bench,ray]'
models=("smollm2-135m")
[ "${1:-}" = "--tests" ] && models+=("gemma3-270m")
.venv/bin/llmzip prepare "${models[@]}"
