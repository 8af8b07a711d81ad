"""The engine's key/value cache: one preallocated tensor pair with a row per running sequence.

Owns memory layout and row bookkeeping primitives (grow, move a row, swap two rows). Rows are kept
compact by the scheduler so a decode step reads its keys as a plain slice (no gather, no concatenation
per step); capacity along the sequence axis grows by doubling. It does not decide which sequence owns
which row (engine.py) nor compute attention (decoder.py).
"""

from __future__ import annotations

import torch


class KVCache:
    """k, v: [layers, rows, kv_heads, capacity, head_dim]."""

    def __init__(
        self,
        layers: int,
        rows: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        max_capacity: int,
        initial_capacity: int = 256,
        device: torch.device | str = "cpu",
    ) -> None:
        self.layers, self.rows, self.kv_heads, self.head_dim = layers, rows, kv_heads, head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        self.max_capacity = max_capacity
        self.capacity = 0
        self.k = self.v = torch.empty(0, dtype=dtype, device=self.device)
        self.ensure(min(initial_capacity, max_capacity))

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def ensure(self, length: int) -> None:
        """Make room for positions [0, length). Existing contents are kept."""
        if length <= self.capacity:
            return
        if length > self.max_capacity:
            raise ValueError(f"KV cache needs {length} positions; its maximum is {self.max_capacity}")
        cap = max(self.capacity, 64)
        while cap < length:
            cap *= 2
        cap = min(cap, self.max_capacity)
        shape = (self.layers, self.rows, self.kv_heads, cap, self.head_dim)
        k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        if self.capacity:
            k[:, :, :, : self.capacity] = self.k
            v[:, :, :, : self.capacity] = self.v
        self.k, self.v, self.capacity = k, v, cap

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy row src's first `length` positions into row dst."""
        if src != dst and length > 0:
            self.k[:, dst, :, :length] = self.k[:, src, :, :length]
            self.v[:, dst, :, :length] = self.v[:, src, :, :length]

    def swap(self, i: int, j: int, length: int) -> None:
        """Exchange the first `length` positions of rows i and j."""
        if i != j and length > 0:
            for t in (self.k, self.v):
                tmp = t[:, i, :, :length].clone()
                t[:, i, :, :length] = t[:, j, :, :length]
                t[:, j, :, :length] = tmp
