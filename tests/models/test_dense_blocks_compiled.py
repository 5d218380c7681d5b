"""A dense decoder layer's MLP half replayed from a trace (llama.TransformerBlock.COMPILED_DECODE, through
ops.decode_block as the CUDA backend runs it: mx.compile, one trace per batch size, kept on the layer) gives the
half's own output, for each architecture built of llama's layers, at 1, 3 and 16 rows; and a batch decoded with it
gives the same greedy tokens. The switch is off (a GPU measured little from it, session 40): this holds that
turning it on changes nothing but the host's work."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxd.engine.request import GenerationRequest, TokenEvent
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.generation.params import SamplingParams
from mlxd.loading.loader import load_model
from mlxd.loading.model_source import load_model_and_tokenizer
from mlxd.models import llama, ops, ops_cuda
from mlxd.models.ops_cuda import CudaBackend
from mlxd.models.projections import GatedMLP


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_a_dense_layers_replayed_mlp_half_equals_the_half(arch, model_folder, monkeypatch):
    monkeypatch.setattr(ops_cuda, "COMPILED_BLOCKS", True)
    model = load_model(model_folder(arch), dtype="float32").model
    layer = next(m for _, m in model.named_modules() if isinstance(m, llama.TransformerBlock))
    assert isinstance(layer.mlp, GatedMLP) and not llama.TransformerBlock.COMPILED_DECODE
    dims = layer.post_attention_layernorm.weight.shape[0]
    backend = CudaBackend()
    for rows in (1, 3, 16, 3):
        h = mx.random.normal((rows, 1, dims), key=mx.random.key(rows))
        want = layer.mlp_half(h)
        got = backend.decode_block(layer, layer.mlp_half, h)
        assert got.shape == want.shape
        assert mx.allclose(got, want, rtol=1e-5, atol=1e-6).item(), (arch, rows)
    assert layer._compiled_block is not None


def _greedy(runtime: ModelRuntime) -> dict[str, list[int]]:
    scheduler = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=64, max_batch_size=4))
    requests = [GenerationRequest(f"r{i}", [1 + i, 5, 9, 3 + i], SamplingParams(temperature=0.0), max_tokens=24,
                                  ignore_eos=True) for i in range(4)]
    for request in requests:
        scheduler.add(request)
    tokens: dict[str, list[int]] = {r.request_id: [] for r in requests}
    while scheduler.has_work():
        for request, event in scheduler.step():
            if isinstance(event, TokenEvent):
                tokens[request.request_id] += event.token_ids
    return tokens


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_batch_decodes_the_same_tokens_with_the_mlp_half_replayed(dtype, model_folder, monkeypatch):
    loaded, tokenizer = load_model_and_tokenizer(model_folder("llama"), dtype)
    runtime = ModelRuntime.from_loaded(loaded, tokenizer)
    written = _greedy(runtime)
    monkeypatch.setattr(ops_cuda, "COMPILED_BLOCKS", True)
    monkeypatch.setattr(llama.TransformerBlock, "COMPILED_DECODE", True)
    monkeypatch.setattr(ops._backend, "decode_block", CudaBackend().decode_block)  # every other op as this machine's
    assert _greedy(runtime) == written
    layers = [m for _, m in loaded.model.named_modules() if isinstance(m, llama.TransformerBlock)]
    assert all(getattr(layer, "_compiled_block", None) is not None for layer in layers)  # the replay ran
