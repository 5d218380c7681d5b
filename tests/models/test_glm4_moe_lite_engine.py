"""GLM-4.7-Flash's latent cache through the real scheduler and runner (the fixture folder, served as the daemon
loads it: fused projections, its tokenizer): batched rows of mixed lengths yield what each yields alone, a
prefix-cache hit yields the cold tokens, and admission counts the latent's bytes per token."""

from __future__ import annotations

import pytest

from mlxd.engine.request import GenerationRequest
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.generation.params import SamplingParams
from tests.helpers.engine_runs import assert_batched_rows_yield_what_they_yield_alone, serve
from tests.helpers.parity import fixture_runtime

SAMPLINGS = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.9, top_p=0.95, seed=7),
             SamplingParams(temperature=0.0, repetition_penalty=1.2), SamplingParams(temperature=0.7, seed=3)]
PROMPT_LENGTHS = [37, 3, 21, 1, 58, 12]


@pytest.fixture(scope="module")
def runtime() -> ModelRuntime:
    return fixture_runtime("glm4_moe_lite")


def _prompt(n: int, seed: int) -> list[int]:
    return [3 + (seed * 131 + i * 37 + (i * i) % 17) % 314 for i in range(n)]


def _requests() -> list[GenerationRequest]:
    return [GenerationRequest(f"r{i}", _prompt(n, i), SAMPLINGS[i % len(SAMPLINGS)], max_tokens=8 + 3 * i,
                              ignore_eos=True, logprobs=True)
            for i, n in enumerate(PROMPT_LENGTHS)]


@pytest.mark.parametrize("heads_first", [False, True], ids=["row-by-row", "query-heads-first"])
def test_batched_rows_yield_what_they_yield_alone(runtime, heads_first, monkeypatch):
    """Also with a decode batch's query absorbed per head over the rows (attention.QUERY_HEADS_FIRST)."""
    monkeypatch.setattr("mlxd.models.glm4_moe_lite.attention.QUERY_HEADS_FIRST", heads_first)
    assert_batched_rows_yield_what_they_yield_alone(
        runtime, _requests, alone=SchedulerOptions(prefill_chunk_size=7, max_batch_size=1),
        batched=SchedulerOptions(prefill_chunk_size=16, max_batch_size=8),
        arrivals={0: slice(None, 2), 3: slice(2, 4), 8: slice(4, None)})


def _serve(scheduler: Scheduler, ids: list[int], sampling: SamplingParams) -> tuple[list[int], int]:
    return serve(scheduler, ids, sampling, max_tokens=20)


@pytest.mark.parametrize("sampling", SAMPLINGS[:2], ids=["greedy", "seeded"])
def test_prefix_cache_hits_yield_the_cold_tokens(runtime, sampling):
    first, second = _prompt(50, 1), _prompt(30, 1) + _prompt(25, 2)
    cold = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=16, prefix_cache_bytes=0))
    scheduler = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=16, prefix_cache_bytes=64 << 20))
    assert _serve(scheduler, first, sampling)[1] == 0
    tokens, cached = _serve(scheduler, second, sampling)
    assert cached == 30  # the stored prompt's latents, trimmed to what both share
    assert tokens == _serve(cold, second, sampling)[0]
    tokens, cached = _serve(scheduler, first, sampling)  # the same prompt again
    assert cached == len(first) - 1
    assert tokens == _serve(cold, first, sampling)[0]


def test_admission_counts_the_latent_bytes_per_token(runtime):
    """(kv_lora_rank 24 + rope 8) float32 values per layer: 128 bytes, not plain attention's 4 x (24 + 12) x 4."""
    scheduler = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=16, max_batch_size=4))
    assert scheduler.budget.layout.layers == ((128, None),) * 3
    assert scheduler.budget.need([100, 60]) == 2 * 100 * 3 * 128
