"""How much KV-cache memory the sequences the scheduler admits may need, so admission never exceeds a budget.

The decode batch right-aligns its rows (models/batch_cache.py), so a batch of B rows holds B × (its longest
row) columns per layer; a sequence may grow to prompt + token limit. Admitting a request must keep
B × max(prompt + limit) within the budget, counted per layer (sliding-window layers keep at most their window
plus one growth step). A recurrent layer (models/recurrent_cache.py) holds the same states however long its row
is: a fixed number of bytes per row (more during a verify step, which keeps them after each position it feeds).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

import mlx.core as mx

from mlxd.models.cache import LayerCache
from mlxd.models.recurrent_cache import RecurrentCache

_GROWTH_STEP = 256  # columns a cache allocates at a time (models/cache.py, models/batch_cache.py)


@dataclass(frozen=True)
class KvLayout:
    """Per attention layer: bytes one position of one sequence takes (keys + values), and the sliding window or
    None; and the bytes the recurrent layers' states of one sequence take, whatever its length."""

    layers: tuple[tuple[int, int | None], ...]
    row_bytes: int = 0

    def bytes_for(self, columns: int) -> int:
        """Bytes one row of `columns` positions takes over all layers."""
        per_position = sum(b * (columns if w is None else min(columns, w + _GROWTH_STEP)) for b, w in self.layers)
        return per_position + self.row_bytes

    def verifying(self, depth: int) -> KvLayout:
        """The layout while verify steps feed up to `depth` drafts per row: such a step holds, beside a row's
        recurrent states, those after each of its 1 + depth positions until its rollback picks the accepted one."""
        return dataclasses.replace(self, row_bytes=self.row_bytes * (depth + 2))

    @classmethod
    def of(cls, cache: Sequence[LayerCache]) -> KvLayout:
        """The layout of a one-sequence cache that holds at least one position (what the runner probes)."""
        layers, row_bytes = [], 0
        for c in cache:
            kept = c.kept()
            if kept is None:
                raise ValueError("the cache to read the layout off holds no position")
            if isinstance(c, RecurrentCache):
                row_bytes += sum(a.nbytes for a in kept)
                continue
            keys, values = kept
            per_position = keys.shape[1] * keys.shape[3] * keys.dtype.size + \
                values.shape[1] * values.shape[3] * values.dtype.size
            layers.append((per_position, c.window))
        return cls(tuple(layers), row_bytes)


def auto_budget_bytes(sharing: int = 1) -> int:
    """Half of the memory the device has left after the weights (the unified or host memory on CPU). With
    `sharing` processes on the device, each holding about what this one holds (the ranks of `--tensor-parallel N`
    on one host over the ring: one GPU, or the host's memory), it is left after all their weights and each gets
    its part: every rank's caches grow as rank 0 admits, so N whole halves would ask for more than there is."""
    return max(1 << 30, (device_memory_bytes() - sharing * mx.get_active_memory()) // (2 * sharing))


def device_memory_bytes() -> int:
    """The default device's memory: a GPU's, the unified memory on Metal, the host's physical memory on a CPU."""
    info = mx.device_info()
    total = int(info.get("memory_size") or info.get("total_memory") or 0)
    return total or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class KvBudget:
    def __init__(self, layout: KvLayout, budget_bytes: int) -> None:
        self.layout = layout
        self.budget_bytes = budget_bytes

    def need(self, reserved_tokens: list[int]) -> int:
        """Bytes a batch of sequences, each growing to its reserved token count, may take at most."""
        if not reserved_tokens:
            return 0
        return len(reserved_tokens) * self.layout.bytes_for(max(reserved_tokens))

    def fits(self, reserved_tokens: list[int]) -> bool:
        return self.need(reserved_tokens) <= self.budget_bytes
