"""Settings of the process that runs llmzip: what the command line does to its own process and a
library must not do to its host's on import. `llmzip.tune_process()` applies them; a program that
codes with llmzip may call it too, first thing (libgomp reads its settings when torch loads it)."""

from __future__ import annotations

import ctypes
import os
import sys


def tune_process() -> None:
    """How long an idle OpenMP thread spins before it sleeps (GNU OpenMP, torch's runtime), and
    how much freed memory glibc keeps. Variables the user set are left alone."""
    # A model step is hundreds of small kernels, and waking a sleeping thread for each one cost
    # 40% of the speed (OMP_WAIT_POLICY=PASSIVE: 79 ms a step against 51 ms); libgomp's default of
    # 300000 spins made two llmzip processes sharing 2 cores crawl (650 ms a step). 10000 keeps
    # the full speed alone and 156 ms shared.
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    """glibc gives freed blocks back to the kernel (mmap'd ones over 128 KB at once, the heap's
    top past 128 KB), so every forward faulted its scores and activations in again: a
    teacher-forced forward's attention took 18 ms a layer instead of 8 on the AMD EPYC. Keep
    blocks up to 32 MB on the heap and up to 1 GB of free heap."""
    if sys.platform == "linux":
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:  # musl and others: their own allocators
            return
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
