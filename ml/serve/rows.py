"""Which running sequence owns which KV-cache row, kept compact so decode reads a plain slice.

Rows [0, D) hold decoding sequences and [D, D+P) sequences still prefilling their prompt. Joining the
decode block swaps a row into place; a finished sequence's row is filled from the end of its block
(moving only the positions actually written). Owns that bookkeeping and the matching cache copies; it
does not decide admission or run the model (engine.py).
"""

from __future__ import annotations

from ml.serve.kv_cache import KVCache
from ml.serve.sequence import Sequence


class RowTable:
    def __init__(self, cache: KVCache) -> None:
        self.cache = cache
        self.size = cache.rows
        self._rows: list[Sequence | None] = [None] * self.size
        self.num_decoding = 0  # D
        self.num_prefilling = 0  # P

    @property
    def running(self) -> int:
        return self.num_decoding + self.num_prefilling

    @property
    def free(self) -> int:
        return self.size - self.running

    def sequences(self) -> list[Sequence]:
        return [s for s in self._rows[: self.running] if s is not None]

    def decoding(self) -> list[Sequence]:
        """The decode block, in row order (row i of the batch is cache row i)."""
        return self._rows[: self.num_decoding]

    def prefilling(self) -> list[Sequence]:
        return self._rows[self.num_decoding : self.running]

    def add_prefill(self, seq: Sequence) -> None:
        assert self.free > 0
        seq.row = self.running
        self._rows[seq.row] = seq
        self.num_prefilling += 1

    def to_decoding(self, seq: Sequence) -> None:
        """A prefilled sequence joins the decode block by swapping into row D."""
        d = self.num_decoding
        other = self._rows[d]
        if other is not seq:
            self.cache.swap(seq.row, d, max(seq.cached, other.cached))
            self._rows[seq.row], self._rows[d] = other, seq
            other.row, seq.row = seq.row, d
        seq.decoding = True
        self.num_decoding += 1
        self.num_prefilling -= 1

    def release(self, seq: Sequence) -> None:
        r = seq.row
        self._rows[r] = None
        if seq.decoding:
            last = self.num_decoding - 1
            if r != last:
                self._move(self._rows[last], r)
            self.num_decoding -= 1
            if self.num_prefilling:  # close the hole between the blocks with the last prefill row
                self._move(self._rows[self.running], self.num_decoding)
        else:
            last = self.running - 1
            if r != last:
                self._move(self._rows[last], r)
            self.num_prefilling -= 1
        seq.row = -1

    def reset(self) -> list[Sequence]:
        """Forget every row (after a failed step); returns the sequences that held one."""
        held = [s for s in self._rows if s is not None]
        self._rows = [None] * self.size
        self.num_decoding = self.num_prefilling = 0
        for s in held:
            s.row = -1
        return held

    def _move(self, seq: Sequence, row: int) -> None:
        self.cache.move(seq.row, row, seq.cached)
        self._rows[seq.row] = None
        self._rows[row] = seq
        seq.row = row
