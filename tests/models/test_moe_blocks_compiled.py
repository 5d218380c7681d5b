"""Every MoE block's decode step replayed from a trace (ops.decode_block as the CUDA backend runs it with
ops_cuda.COMPILED_BLOCKS: mx.compile, one trace per batch size, kept on the block) gives the block's own output, for
each architecture's fixture block, at 1, 3 and 16 rows. Here the block's ops are this machine's (the CUDA kernels'
own tests run on a GPU); what this holds is that every block traces: no Python branch on an array's values, no
array made outside the graph. A prompt's chunk runs as written. Which blocks a decode step compiles is each class's
COMPILED_DECODE."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxd.loading.loader import load_model
from mlxd.models import moe, ops_cuda
from mlxd.models.ops_cuda import CudaBackend

ARCHS = ["gemma4_moe", "glm4_moe_lite", "gpt_oss", "mixtral", "nemotron_h", "qwen3_5_moe", "qwen3_moe", "qwen3_next"]
COMPILED = {"glm4_moe_lite"}  # the classes whose COMPILED_DECODE is on (measured on a GPU)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_moe_blocks_replayed_decode_equals_the_block(arch, model_folder, monkeypatch):
    monkeypatch.setattr(ops_cuda, "COMPILED_BLOCKS", True)
    model = load_model(model_folder(arch), dtype="float32").model
    blocks = [m for _, m in model.named_modules() if isinstance(m, moe.SparseMoe)]
    assert blocks, arch
    block = blocks[0]
    assert type(block).COMPILED_DECODE == (arch in COMPILED)
    dims = block.switch_mlp.projections()[-1].weight.shape[1]
    backend = CudaBackend()
    for rows in (1, 3, 16, 3):
        x = mx.random.normal((rows, 1, dims), key=mx.random.key(rows))
        more = [mx.random.normal((rows, 1, dims), key=mx.random.key(rows + 100))] if arch == "gemma4_moe" else []
        want = block._forward(x, *more)
        got = backend.decode_block(block, block._forward, x, *more)
        assert got.shape == want.shape
        assert mx.allclose(got, want, rtol=1e-5, atol=1e-6).item(), (arch, rows)
    assert block._compiled_block is not None
    chunk = mx.random.normal((1, 5, dims), key=mx.random.key(5))  # a prompt's chunk (L > 1) runs as written
    more = [chunk] if arch == "gemma4_moe" else []
    assert mx.array_equal(backend.decode_block(block, block._forward, chunk, *more), block._forward(chunk, *more))
