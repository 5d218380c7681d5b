"""The default KV budget when several processes' caches share one device (`--tensor-parallel N` on one host over the
ring, or one GPU): half of what is left after all their weights, divided among them, so that N ranks whose caches
grow together as rank 0 admits never ask for more than the device holds; one process alone keeps half of what is
left after its weights. Which ranks share: this host's ranks over the ring, not NCCL's (a GPU each) nor
mlx.launch's."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from mlxd.engine import kv_budget
from mlxd.engine.worker import WorkerOptions
from mlxd.parallel.launch import Ranks

GIB = 1 << 30


def test_the_budget_is_divided_among_the_processes_sharing_the_device(monkeypatch):
    monkeypatch.setattr(mx, "device_info", lambda: {"memory_size": 100 * GIB})
    monkeypatch.setattr(mx, "get_active_memory", lambda: 10 * GIB)
    assert kv_budget.auto_budget_bytes() == 45 * GIB
    assert kv_budget.auto_budget_bytes(2) == 20 * GIB        # (100 - 2 x 10) / 2, in two parts
    assert 2 * (kv_budget.auto_budget_bytes(2) + 10 * GIB) <= 100 * GIB
    monkeypatch.setattr(mx, "get_active_memory", lambda: 60 * GIB)
    assert kv_budget.auto_budget_bytes(2) == GIB              # nothing left: the floor


def test_which_ranks_share_this_processes_device():
    children = [object(), object()]
    ring_here = Ranks(None, "ring", children, workdir=Path("/tmp/x"))  # type: ignore[arg-type]
    assert ring_here.sharing_device == 3
    assert Ranks(None, "nccl", children, workdir=Path("/tmp/x")).sharing_device == 1  # type: ignore[arg-type]
    assert Ranks(None, "ring").sharing_device == 1  # type: ignore[arg-type]  (mlx.launch's: placed elsewhere)
    assert WorkerOptions(Path("m"), kv_cache_sharing=3).scheduler_options().kv_budget_sharing == 3
