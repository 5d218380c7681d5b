"""`serve --prefill-chunk auto` (the default): the prompt tokens a prefill step takes come from the kernels chosen at
load (models/ops.py prefill_chunk): 2,048 with the CUDA backend, where fewer and larger chunks sped up a 2,048-token
prefill of every model measured (ops_cuda.CudaBackend.prefill_chunk), 512 with the other backends; a number given
is kept. A request asking for prompt logprobs prefills in chunks of at most SCORED_CHUNK_TOKENS, whose logits are
all kept."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import pytest

from mlxd.cli import _prefill_chunk
from mlxd.engine.request import GenerationRequest
from mlxd.engine.scheduler import SCORED_CHUNK_TOKENS, Scheduler, SchedulerOptions
from mlxd.engine.worker import WorkerOptions
from mlxd.generation.params import SamplingParams
from mlxd.models import ops
from mlxd.models.ops_cpu_numpy import NumpyBackend
from mlxd.models.ops_cuda import CudaBackend
from mlxd.models.ops_mlx import MLXBackend
from tests.helpers.engine_runs import drain, run
from tests.helpers.fakes import VOCAB, FakeModel, fake_runtime


def test_auto_parses_to_zero_and_a_count_to_itself():
    assert _prefill_chunk("auto") == 0
    assert _prefill_chunk("64") == 64


@pytest.mark.parametrize("backend", ["mlx", "numpy"])
def test_zero_takes_the_backends_chunk_and_a_given_one_is_kept(backend):
    with ops.using(backend):
        options = WorkerOptions(Path("m")).scheduler_options()
        assert options.prefill_chunk_size == ops.prefill_chunk() == 512
        given = WorkerOptions(Path("m"), prefill_chunk_size=96).scheduler_options()
        assert given.prefill_chunk_size == 96


def test_the_cuda_backend_prefills_in_larger_chunks():
    assert [b().prefill_chunk() for b in (MLXBackend, NumpyBackend, CudaBackend)] == [512, 512, 2048]


class _Widths(FakeModel):
    """The fake model, noting the tokens of each forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.widths: list[int] = []

    def __call__(self, inputs: mx.array, cache: list | None = None, **kwargs) -> mx.array:
        self.widths.append(inputs.shape[1])
        return super().__call__(inputs, cache, **kwargs)


def test_a_prompt_logprobs_request_prefills_in_chunks_of_at_most_the_scored_tokens():
    prompt = [1 + i % (VOCAB - 1) for i in range(1200)]
    widths = {}
    for scored in (False, True):
        model = _Widths()
        scheduler = Scheduler(fake_runtime(model, context_length=4096), SchedulerOptions(prefill_chunk_size=2048))
        request = GenerationRequest("r", prompt, SamplingParams(temperature=0.0), max_tokens=2,
                                    prompt_logprobs=scored)
        run(scheduler, request)
        drain(request)
        widths[scored] = [w for w in model.widths if w > 1]  # the prefill passes (decode steps feed one token)
    assert widths[False] == [1199]
    assert widths[True] == [SCORED_CHUNK_TOKENS, SCORED_CHUNK_TOKENS, 1199 - 2 * SCORED_CHUNK_TOKENS]
