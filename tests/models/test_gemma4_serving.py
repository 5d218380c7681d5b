"""Gemma 4 through the engine's real scheduler and runner (loaded as served: fused projections, the CPU's kernels):
requests decoding together yield what each yields alone, and prefix-cache hits yield the cold tokens, with
KV-shared layers (gemma4) and sliding windows shorter than the prompts (14 and 13 positions)."""

from __future__ import annotations

import numpy as np
import pytest

from mlxd.engine.request import GenerationRequest
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.generation.params import SamplingParams
from tests.helpers.engine_runs import assert_batched_rows_yield_what_they_yield_alone, serve
from tests.helpers.parity import fixture_runtime

LENGTHS = [3, 20, 31, 45, 9, 17]
SAMPLINGS = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.9, top_p=0.9, seed=7),
             SamplingParams(temperature=0.7, top_k=20, seed=11)]


@pytest.fixture(scope="module", params=["gemma4", "gemma4_moe"])
def runtime(request):
    return fixture_runtime(request.param)


def _prompt(length: int, seed: int) -> list[int]:
    # Ids 3..316: no special or image token (317-319).
    return np.random.default_rng(seed).integers(3, 317, length).tolist()


def _requests() -> list[GenerationRequest]:
    return [GenerationRequest(f"r{i}", _prompt(n, i), SAMPLINGS[i % len(SAMPLINGS)], max_tokens=10 + 3 * i,
                              ignore_eos=True, logprobs=True) for i, n in enumerate(LENGTHS)]


def test_batched_requests_yield_what_they_yield_alone(runtime):
    assert_batched_rows_yield_what_they_yield_alone(
        runtime, _requests, alone=SchedulerOptions(prefill_chunk_size=8, max_batch_size=1),
        batched=SchedulerOptions(prefill_chunk_size=8, max_batch_size=8),
        arrivals={0: slice(None, 2), 3: slice(2, 4), 7: slice(4, None)})


def _serve(scheduler: Scheduler, ids: list[int], sampling: SamplingParams) -> tuple[list[int], int]:
    return serve(scheduler, ids, sampling, max_tokens=12)


@pytest.mark.parametrize("sampling", SAMPLINGS[:2], ids=["greedy", "seeded"])
def test_prefix_cache_hits_yield_the_cold_tokens(runtime, sampling):
    """Prompts past the window: the stored prompt serves itself and any prompt that extends it, never a prompt
    that leaves it part way (its sliding layers dropped positions)."""
    stored = _prompt(30, 100)
    prompts = [stored, stored + _prompt(9, 101), stored[:20] + _prompt(15, 102)]
    cold = [_serve(Scheduler(runtime, SchedulerOptions(prefill_chunk_size=7)), p, sampling)[0] for p in prompts]
    scheduler = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=7, max_batch_size=4,
                                                    prefix_cache_bytes=64 << 20))
    assert _serve(scheduler, stored, sampling) == (cold[0], 0)
    assert _serve(scheduler, stored, sampling) == (cold[0], len(stored) - 1)
    assert _serve(scheduler, prompts[1], sampling) == (cold[1], len(stored) - 1)
    assert _serve(scheduler, prompts[2], sampling) == (cold[2], 0)
