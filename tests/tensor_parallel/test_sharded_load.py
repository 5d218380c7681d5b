"""A rank's share of the weights, loaded in-process as rank 0 of 2 (no ring needed: loading runs no collective):
it holds about half of every split matrix and whole replicated ones, and no more memory than its parameters
(a slice that kept the whole tensor it was read from alive would hold the model's size)."""

from __future__ import annotations

import gc

import mlx.core as mx
import pytest

from mlxd.errors import ModelLoadError
from mlxd.loading.loader import load_model
from mlxd.loading.weights import parameter_arrays
from tests.helpers.parity import copy_model_folder


class RankOf:
    """Stands for an mx.distributed group in what sharding reads of it (rank and size)."""

    def __init__(self, rank: int, size: int) -> None:
        self._rank, self._size = rank, size

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size


def _bytes(model) -> int:
    return sum(a.nbytes for _, a in parameter_arrays(model))


def _allocated(model) -> int:
    """What the parameters take from the allocator: on CUDA, MLX 0.32's allocator rounds a buffer under 16 KiB up
    to a power of two and a larger one up to whole 16 KiB pages (mlx/backend/cuda/allocator.cpp), which for a
    tiny fixture's many small arrays is a third more than their bytes (seen on an H200: 583,520 bytes held for
    423,680 of parameters); the CPU's allocator holds their bytes."""
    if not mx.cuda.is_available():
        return _bytes(model)
    page = 16384
    return sum(max(8, 1 << (a.nbytes - 1).bit_length()) if a.nbytes < page else -(-a.nbytes // page) * page
               for _, a in parameter_arrays(model))


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe", "qwen3_5"])
def test_a_rank_holds_only_its_share(arch, tmp_path):
    folder = copy_model_folder(arch, "v5", tmp_path / arch)
    whole = _bytes(load_model(folder, dtype="float32").model)
    gc.collect()
    mx.clear_cache()
    before = mx.get_active_memory()
    loaded = load_model(folder, dtype="float32", group=RankOf(0, 2))  # type: ignore[arg-type]
    gc.collect()
    held = mx.get_active_memory() - before
    share = _bytes(loaded.model)
    assert share < 0.75 * whole  # the layers halved; embedding, head and norms whole
    allocated = _allocated(loaded.model)
    assert held <= allocated * 1.02 + (64 << 10), f"{arch}: {held} bytes held for {share} bytes of parameters"
    attention = loaded.model.layers[-1].self_attn
    assert (attention.n_heads, attention.n_kv_heads) == (2, 1)


def test_heads_that_do_not_split_are_named(tmp_path):
    folder = copy_model_folder("llama", "v5", tmp_path / "llama")
    with pytest.raises(ModelLoadError, match="4 attention heads cannot be split across 3 ranks"):
        load_model(folder, dtype="float32", group=RankOf(0, 3))  # type: ignore[arg-type]
