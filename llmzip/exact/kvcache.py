"""The exact models' key/value cache: the integers attention reads, and their scales.

Without a window the cache holds every position. With one, a sequence may run past the
cache's capacity: a query attends the `window` keys up to itself and the first `sinks` keys
(the steering prefix and the first tokens: StreamingLLM's attention sinks), so `make_room`
drops the keys no later query attends and slides the rest down. Attention sums integers, in
any order, so a query sees the same numbers wherever its keys sit.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from .. import versions
from .arithmetic import NO_WINDOW
from .prepared import DecoderConfig, PreparedModel

SLACK = 256  # positions written between two slides: at least the longest write, a teacher-forced block


def key_dtype(key_levels: int) -> torch.dtype:
    """The narrowest integer type holding keys in [-key_levels, key_levels]."""
    return torch.int8 if key_levels <= 127 else torch.int16


class KVCache:
    """Integer keys (|k| <= key_levels: int8 or int16) and values (int8) with their float32
    scales, per layer, for `rows` sequences of up to `positions` positions, of which the cache
    holds the first `sinks` and the last `window` (all of them when window is None)."""

    def __init__(
        self,
        config: DecoderConfig,
        key_levels: int,
        rows: int,
        positions: int,
        device: torch.device,
        window: int | None = None,
        sinks: int = 0,
        pin_sinks: bool = False,
        history: int = 0,
    ) -> None:
        self.key_levels = key_levels  # the forward quantizes keys to these levels
        self.rows, self.positions, self.window, self.sinks = rows, positions, window, sinks
        self.pin_sinks = pin_sinks  # queries see the sinks right before their window (`sink_positions`)
        self.history = history  # positions held beyond the window: a later forward may compute them again
        self.capacity = self.slots(positions, window, sinks, history)
        shape = (config.layers, rows, config.kv_heads, self.capacity)
        self.keys = torch.zeros(*shape, config.head_dim, dtype=key_dtype(key_levels), device=device)
        self.values = torch.zeros(*shape, config.head_dim, dtype=torch.int8, device=device)
        self.key_scales = torch.zeros(*shape, device=device)
        self.value_scales = torch.zeros(*shape, device=device)
        self.dropped = 0  # positions after the sinks no longer held

    @classmethod
    def of(
        cls, model: PreparedModel, forward: str, rows: int, positions: int, window: int | None, sinks: int, history: int
    ) -> KVCache:
        """A cache for `model`'s `forward` (versions.FORWARDS): with its keys' levels, its sinks
        pinned or not."""
        key_levels = model.key_levels(model.config, forward)
        pins = versions.FORWARDS[forward].pins_sinks
        return cls(model.config, key_levels, rows, positions, model.device, window, sinks, pins, history)

    @staticmethod
    def slots(positions: int, window: int | None, sinks: int, history: int = 0) -> int:
        """Positions held at once."""
        return positions if window is None else min(positions, sinks + window + history + SLACK)

    @staticmethod
    def bytes_per_position(config: DecoderConfig, key_levels: int) -> int:
        key_bytes = key_dtype(key_levels).itemsize
        return config.layers * config.kv_heads * ((key_bytes + 1) * config.head_dim + 8)

    def first_rows(self, rows: int) -> KVCache:
        """The first `rows` sequences, as views of this cache's tensors: what a forward writes
        there is here. Slides (`make_room`) must be made here, before the view is taken."""
        view = copy.copy(self)
        view.rows = rows
        view.keys, view.key_scales, view.values, view.value_scales = (
            t[:, :rows] for t in (self.keys, self.key_scales, self.values, self.value_scales)
        )
        return view

    def restart(self) -> None:
        """New sequences over the same steering prefix: its keys stay, first; the rest is overwritten."""
        self.dropped = 0

    def slot(self, position: int) -> int:
        """Where `position` is (or will be) held."""
        return position if position < self.sinks else position - self.dropped

    def make_room(self, start: int, length: int) -> None:
        """Before positions start.. start+length-1 are written: drop the keys that no query from
        `start - history` on attends, if those positions would not fit."""
        if self.slot(start) + length <= self.capacity:
            return
        if self.window is None or length > SLACK:
            raise ValueError(f"positions up to {start + length} do not fit a cache of {self.capacity}")
        first, end = self.slot(max(self.sinks, start - self.history - self.window + 1)), self.slot(start)
        for t in (self.keys, self.values, self.key_scales, self.value_scales):
            t[:, :, :, self.sinks : self.sinks + end - first] = t[:, :, :, first:end].clone()
        self.dropped += first - self.sinks

    def write(self, layer: int, start: int, k: Tensor, k_scale: Tensor, v: Tensor, v_scale: Tensor) -> None:
        """Store positions start.. of integer k, v [rows, kv_heads, T, head_dim] and scales [rows, kv_heads, T]."""
        first = self.slot(start)
        end = first + k.shape[2]
        self.keys[layer, :, :, first:end] = k  # integer-valued floats: the copy converts them exactly
        self.key_scales[layer, :, :, first:end] = k_scale
        self.values[layer, :, :, first:end] = v
        self.value_scales[layer, :, :, first:end] = v_scale

    def read(self, layer: int, end: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Keys and values held for positions up to end-1 (slot order), scales shaped
        [rows, kv_heads, 1, slots]."""
        held = self.slot(end - 1) + 1
        return (
            self.keys[layer, :, :, :held],
            self.key_scales[layer, :, :, None, :held],
            self.values[layer, :, :, :held],
            self.value_scales[layer, :, :, None, :held],
        )

    def sink_positions(self, start: int, length: int) -> Tensor | None:
        """Where queries at positions start..start+length-1 see the sinks from: the sinks sit right
        before the window (StreamingLLM's positions in the cache), so a query past
        sinks + window - 1 is taken there to score them; however long the sequence, no query
        sees a key farther than the model was trained for. None when every query is at its own
        position (or the forward does not pin sinks)."""
        last = self.sinks + self.window - 1 if self.pin_sinks and self.window and self.sinks else None
        if last is None or start + length - 1 <= last:
            return None
        return torch.clamp(torch.arange(start, start + length, device=self.keys.device), max=last)

    def attended(self, start: int, length: int, layer_window: int | None = None) -> tuple[Tensor, int, int]:
        """For queries at positions start..start+length-1: their slots (int64 [length]), and the
        window and sinks `arithmetic.attention` takes (a layer with its own, shorter window has no sinks)."""
        first = self.slot(start)
        slots = torch.arange(first, first + length, device=self.keys.device)
        window = self.window or NO_WINDOW
        if layer_window is not None and layer_window < window:
            return slots, layer_window, 0
        return slots, window, self.sinks
