"""What llmzip says while it works, besides its results: one line before each piece of first-run
work (fetching a model, preparing its weights, building the kernels), a progress bar where that
work takes a while, and warnings. All go through the `llmzip` logger: the command line shows
them unless -q, and a program using the library sees them once it configures logging."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

LOG = logging.getLogger("llmzip")


def say(message: str) -> None:
    LOG.info(message)


def warn(message: str) -> None:
    LOG.warning(message)


def bar(total: int | None, desc: str, unit: str = "B") -> tqdm:
    """A tqdm bar on stderr (bytes, or other units; total None: a pipe's, counted without ETA),
    drawn only where the notices are shown and there is something to count."""
    hidden = total == 0 or not LOG.isEnabledFor(logging.INFO)
    disable = True if hidden else None  # None: tqdm's own choice, no bar where stderr is not a terminal
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1024, disable=disable)


def show(quiet: bool) -> None:
    """Print notices on stderr as `llmzip: ...` (warnings as `llmzip: warning: ...`); quiet: none."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    LOG.handlers[:] = [handler]
    LOG.setLevel(logging.ERROR if quiet else logging.INFO)


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        kind = "warning: " if record.levelno == logging.WARNING else ""
        return f"llmzip: {kind}{record.getMessage()}"
