"""`serve --prefill-chunk auto` (the default): the prompt tokens a prefill step takes come from the kernels chosen at
load (models/ops.py prefill_chunk) and whether the weights are held quantized: 2,048 with the CUDA backend for
unquantized weights, where fewer and larger chunks halved a 2,048-token prefill of the MoE models measured, 512 for
quantized ones (ops_cuda.CudaBackend.prefill_chunk says why) and with the other backends; a number given is kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxd.cli import _prefill_chunk
from mlxd.engine.worker import WorkerOptions
from mlxd.models import ops
from mlxd.models.ops_cpu_numpy import NumpyBackend
from mlxd.models.ops_cuda import CudaBackend
from mlxd.models.ops_mlx import MLXBackend


def test_auto_parses_to_zero_and_a_count_to_itself():
    assert _prefill_chunk("auto") == 0
    assert _prefill_chunk("64") == 64


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("backend", ["mlx", "numpy"])
def test_zero_takes_the_backends_chunk_and_a_given_one_is_kept(backend, quantized):
    with ops.using(backend):
        options = WorkerOptions(Path("m")).scheduler_options(quantized)
        assert options.prefill_chunk_size == ops.prefill_chunk(quantized) == 512
        given = WorkerOptions(Path("m"), prefill_chunk_size=96).scheduler_options(quantized)
        assert given.prefill_chunk_size == 96


def test_the_cuda_backend_prefills_unquantized_weights_in_larger_chunks():
    assert [b().prefill_chunk(q) for b in (MLXBackend, NumpyBackend) for q in (False, True)] == [512] * 4
    assert [CudaBackend().prefill_chunk(q) for q in (False, True)] == [2048, 512]
