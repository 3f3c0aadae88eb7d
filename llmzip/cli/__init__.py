"""The `llmzip` command: `commands` parses arguments and reports, `files` reads and writes files."""

from .commands import main

__all__ = ["main"]
