"""Automatic prefix caching: keys and values of token blocks already computed, reused by later requests.

Owns a bounded store of KV blocks (`block_size` positions each) keyed like a radix tree: a block's key is
(adapter, parent block, its own tokens), so a block is found only under the exact same leading tokens
and the same adapter weights (LoRA changes every layer's keys and values). Lookup walks a prompt's full
blocks from the start and copies the matched positions into a request's cache row; insertion copies
the full blocks a row has written that are not stored yet. Memory grows by doubling up to `max_bytes`;
when full, least recently used blocks without children are evicted first, so a shared system prompt
outlives the turns that extended it. It does not decide when to look up or insert (engine.py) nor
compute anything: entries are exact copies of what a prefill or decode step wrote.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from ml.serve.kv_cache import KVCache

ROOT = -1  # parent id of a prompt's first block


@dataclass
class _Block:
    key: tuple
    id: int  # never reused, so a stale child key cannot match a recycled slot
    parent: int  # slot of the parent block, -1 for a first block
    children: int = 0


class PrefixCache:
    """k, v: [layers, kv_heads, slots, block_size, head_dim] on the engine cache's device and dtype."""

    def __init__(self, cache: KVCache, block_size: int, max_bytes: int) -> None:
        self.block_size = block_size
        self._layers, self._kv_heads, self._head_dim = cache.layers, cache.kv_heads, cache.head_dim
        self._dtype, self._device = cache.dtype, cache.device
        elem = cache.dtype.itemsize
        self.block_bytes = 2 * cache.layers * cache.kv_heads * block_size * cache.head_dim * elem
        self.max_blocks = max(0, max_bytes // self.block_bytes)
        self.k = self.v = self._alloc(0)
        self._blocks: dict[int, _Block] = {}  # slot -> block
        self._index: dict[tuple, int] = {}  # key -> slot
        self._lru: OrderedDict[int, None] = OrderedDict()  # slots, least recently used first
        self._free: list[int] = []
        self._ids = itertools.count()
        self.evicted_total = 0

    @property
    def enabled(self) -> bool:
        return self.max_blocks > 0

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    @property
    def num_blocks(self) -> int:
        return len(self._blocks)

    def _alloc(self, slots: int) -> torch.Tensor:
        shape = (self._layers, self._kv_heads, slots, self.block_size, self._head_dim)
        return torch.empty(shape, dtype=self._dtype, device=self._device)

    def _key(self, adapter: Hashable, parent: int, tokens: Sequence[int], i: int) -> tuple:
        b = self.block_size
        parent_id = ROOT if parent == ROOT else self._blocks[parent].id
        return (adapter, parent_id, tuple(tokens[i * b : (i + 1) * b]))

    def _match(self, adapter: Hashable, tokens: Sequence[int], blocks: int) -> list[int]:
        """Slots of the longest stored chain of tokens' first `blocks` full blocks."""
        path: list[int] = []
        parent = ROOT
        for i in range(blocks):
            slot = self._index.get(self._key(adapter, parent, tokens, i))
            if slot is None:
                break
            path.append(slot)
            parent = slot
        for slot in reversed(path):  # leaf first, so ancestors stay more recent than descendants
            self._lru.move_to_end(slot)
        return path

    # ---- lookup ---------------------------------------------------------------------------------
    def load(self, adapter: Hashable, tokens: Sequence[int], limit: int, cache: KVCache, row: int) -> int:
        """Copy the stored prefix of `tokens` (at most `limit` positions) into cache row `row`;
        returns how many positions were filled (0 on a miss)."""
        if not self.enabled or limit < 1:
            return 0
        path = self._match(adapter, tokens, min(len(tokens), limit + self.block_size - 1) // self.block_size)
        n = min(len(path) * self.block_size, limit)
        if n == 0:
            return 0
        cache.ensure(n)
        slots = torch.tensor(path, dtype=torch.long, device=self._device)
        shape = (self._layers, self._kv_heads, len(path) * self.block_size, self._head_dim)
        for store, dst in ((self.k, cache.k), (self.v, cache.v)):
            dst[:, row, :, :n] = store.index_select(2, slots).view(shape)[:, :, :n]
        return n

    # ---- insertion ------------------------------------------------------------------------------
    def store(self, adapter: Hashable, tokens: Sequence[int], written: int, cache: KVCache, row: int) -> int:
        """Keep the full blocks among row `row`'s first `written` positions (keys and values of
        tokens[:written]) that are not stored yet; returns how many blocks were added."""
        blocks = min(written, len(tokens)) // self.block_size
        if not self.enabled or blocks == 0:
            return 0
        path = self._match(adapter, tokens, blocks)
        first = len(path)
        parent = path[-1] if path else ROOT
        for i in range(first, blocks):
            slot = self._take(set(path))
            if slot is None:
                break
            block = _Block(self._key(adapter, parent, tokens, i), next(self._ids), parent)
            if parent != ROOT:
                self._blocks[parent].children += 1
            self._blocks[slot] = block
            self._index[block.key] = slot
            self._lru[slot] = None
            path.append(slot)
            parent = slot
        added = path[first:]
        if added:
            b = self.block_size
            start, end = first * b, (first + len(added)) * b
            slots = torch.tensor(added, dtype=torch.long, device=self._device)
            shape = (self._layers, self._kv_heads, len(added), b, self._head_dim)
            for store, src in ((self.k, cache.k), (self.v, cache.v)):
                store.index_copy_(2, slots, src[:, row, :, start:end].reshape(shape))
            for slot in reversed(path):
                self._lru.move_to_end(slot)
        return len(added)

    def _take(self, keep: set[int]) -> int | None:
        """A free slot: a recycled one, a new one (growing the store), or an evicted leaf's."""
        if self._free:
            return self._free.pop()
        used = len(self._blocks)
        capacity = self.k.shape[2]
        if used < capacity:
            return used
        if capacity < self.max_blocks:
            self._grow(min(self.max_blocks, max(8, 2 * capacity)))
            return used
        victim = next((s for s in self._lru if self._blocks[s].children == 0 and s not in keep), None)
        if victim is None:
            return None
        self._evict(victim)
        return self._free.pop()

    def _grow(self, slots: int) -> None:
        k, v = self._alloc(slots), self._alloc(slots)
        n = self.k.shape[2]
        if n:
            k[:, :, :n] = self.k
            v[:, :, :n] = self.v
        self.k, self.v = k, v

    def _evict(self, slot: int) -> None:
        block = self._blocks.pop(slot)
        del self._index[block.key]
        del self._lru[slot]
        if block.parent != ROOT:
            self._blocks[block.parent].children -= 1
        self._free.append(slot)
        self.evicted_total += 1

    def clear(self) -> None:
        """Forget every block (memory is kept for reuse)."""
        self._blocks.clear()
        self._index.clear()
        self._lru.clear()
        self._free = list(range(self.k.shape[2]))
