"""Applying many LoRA adapters to one batch, each row with its own adapter (or none).

The active adapters of a projection group are stacked along the rank axis, so a whole mixed batch
costs one A-matmul per group and one B-matmul per projection, each row masked to its own adapter's
rank columns (the wasted FLOPs on other adapters' columns are tiny next to the base matmuls). Decode
steps (8 rows: overhead bound) run this in float32, where small CPU matmuls are 2-3x cheaper and
which is what peft does by default; prefill (hundreds of rows: compute bound) runs it in the model
dtype. It does not read adapter files (lora.py) or run the base model (decoder.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ml.serve.lora import LoraAdapter

# Layout of a fused projection group: [(projection name, first output column, end column)].
GroupLayout = list[tuple[str, int, int]]


@dataclass
class StackedLora:
    """One projection group's LoRA for a set of active adapters.

    x @ a gives every adapter's rank activations side by side (columns grouped by projection, then
    adapter); each projection's slice of those columns times its stacked B ([R_p, out_p], no zero
    blocks) lands in that projection's output columns.
    """

    a: torch.Tensor  # [in, R]
    owner: torch.Tensor  # [R] index into the active adapter list
    parts: list[tuple[int, int, int, int, torch.Tensor]]  # (col0, col1, out0, out1, B [R_p, out_p])


def stack_group(
    adapters: list[LoraAdapter],
    layer: int,
    layout: GroupLayout,
    dtype: torch.dtype,
    owners: dict[tuple[int, ...], torch.Tensor],
    device: torch.device,
) -> StackedLora | None:
    """Stack the active adapters' LoRA for one layer's projection group; None if none touches it.
    `owners` interns identical owner vectors so a step builds one mask per distinct layout."""
    a_cols: list[torch.Tensor] = []
    owner: list[int] = []
    parts: list[tuple[int, int, int, int, torch.Tensor]] = []
    col = 0
    for proj, out0, out1 in layout:
        bs, start = [], col
        for idx, ad in enumerate(adapters):
            w = ad.weights.get((layer, proj))
            if w is not None:
                a_cols.append(w[0])
                bs.append(w[1])
                owner.extend([idx] * w[0].shape[1])
                col += w[0].shape[1]
        if bs:
            parts.append((start, col, out0, out1, torch.cat(bs, dim=0).to(device, dtype).contiguous()))
    if not a_cols:
        return None
    key = tuple(owner)
    if key not in owners:
        owners[key] = torch.tensor(owner, dtype=torch.long, device=device)
    a = torch.cat(a_cols, dim=1).to(device, dtype).contiguous()
    return StackedLora(a=a, owner=owners[key], parts=parts)


def stack_adapters(
    adapters: list[LoraAdapter],
    num_layers: int,
    layouts: dict[str, GroupLayout],
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> list[dict[str, StackedLora | None]]:
    """Adapter weights are read into host memory (lora.py); the stacks live on the model's device."""
    owners: dict[tuple[int, ...], torch.Tensor] = {}
    device = torch.device(device)
    return [
        {g: stack_group(adapters, i, lay, dtype, owners, device) for g, lay in layouts.items()}
        for i in range(num_layers)
    ]


class LoraBatch:
    """The LoRA side of one forward pass: stacked weights of the active adapters, each row's owner."""

    def __init__(self, stacks: list[dict[str, StackedLora | None]], row_adapter: torch.Tensor, n_active: int):
        self._stacks = stacks
        self._row = row_adapter  # [n] index into the active adapters, -1 = base model
        self._masks: dict[int, torch.Tensor] = {}
        self._uniform = n_active == 1 and bool((row_adapter == 0).all())  # no masking needed

    def add(self, y: torch.Tensor, x: torch.Tensor, layer: int, group: str) -> torch.Tensor:
        """y += LoRA(x) with each row's own adapter, in place (y is a fresh projection output)."""
        s = self._stacks[layer].get(group)
        if s is None:
            return y
        xa = torch.matmul(x.to(s.a.dtype), s.a)  # [n, T, R]
        if not self._uniform:
            xa = xa * self._mask(s.owner, xa.dtype)
        xa, y2 = xa.view(-1, xa.shape[-1]), y.view(-1, y.shape[-1])
        for c0, c1, o0, o1, b in s.parts:
            out = y2 if o1 - o0 == y2.shape[1] else y2[:, o0:o1]  # a view: added in place
            if y.dtype == b.dtype:
                out.addmm_(xa[:, c0:c1], b)
            else:
                out.add_(torch.matmul(xa[:, c0:c1], b))
        return y

    def _mask(self, owner: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        m = self._masks.get(id(owner))
        if m is None:
            m = (self._row[:, None] == owner[None, :]).to(dtype)[:, None, :]  # [n, 1, R]
            self._masks[id(owner)] = m
        return m
