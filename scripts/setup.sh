#!/usr/bin/env bash
# Install llmzip with Ray, its test tools and the benchmarks' baselines and plots into .venv (idempotent),
# then build the fused kernels and fetch and prepare the built-in models (`--model auto` probes both),
# once, rather than on first use (--tests: the same; the tests decode with both).
# torch goes first and pinned: torch==2.13.0 is a local CPU build here, while a looser spec can
# pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[test,bench,ray]'
.venv/bin/llmzip prepare
