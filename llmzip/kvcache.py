"""The exact models' key/value cache: the integers attention reads, and their scales."""

from __future__ import annotations

import torch
from torch import Tensor

from .prepared import DecoderConfig


class KVCache:
    """Integer keys (int16, |k| <= 511) and values (int8) with their float32 scales, per layer,
    for `rows` sequences of up to `capacity` positions."""

    def __init__(self, config: DecoderConfig, rows: int, capacity: int, device: torch.device) -> None:
        shape = (config.layers, rows, config.kv_heads, capacity)
        self.keys = torch.zeros(*shape, config.head_dim, dtype=torch.int16, device=device)
        self.values = torch.zeros(*shape, config.head_dim, dtype=torch.int8, device=device)
        self.key_scales = torch.zeros(*shape, device=device)
        self.value_scales = torch.zeros(*shape, device=device)
        self.rows, self.capacity = rows, capacity

    @staticmethod
    def bytes_per_position(config: DecoderConfig) -> int:
        return config.layers * config.kv_heads * (3 * config.head_dim + 8)

    def write(self, layer: int, start: int, k: Tensor, k_scale: Tensor, v: Tensor, v_scale: Tensor) -> None:
        """Store positions start.. of integer k, v [rows, kv_heads, T, head_dim] and scales [rows, kv_heads, T]."""
        end = start + k.shape[2]
        self.keys[layer, :, :, start:end] = k.to(torch.int16)
        self.key_scales[layer, :, :, start:end] = k_scale
        self.values[layer, :, :, start:end] = v.to(torch.int8)
        self.value_scales[layer, :, :, start:end] = v_scale

    def read(self, layer: int, end: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Keys and values of positions 0..end-1, scales shaped [rows, kv_heads, 1, end]."""
        return (
            self.keys[layer, :, :, :end],
            self.key_scales[layer, :, :, None, :end],
            self.values[layer, :, :, :end],
            self.value_scales[layer, :, :, None, :end],
        )
