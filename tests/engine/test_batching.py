"""Continuous batching on a real model (SmolLM2-135M GGUF): every request yields the same tokens, text and
logprobs decoding beside others as alone, whatever its sampling settings, prompt length and arrival time."""

from __future__ import annotations

import pytest

from mlxd.demo_models import fetch_model
from mlxd.engine.request import GenerationRequest
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.errors import ResourceExhausted
from mlxd.generation.params import SamplingParams
from mlxd.loading.model_source import load_model_and_tokenizer
from tests.helpers.engine_runs import deliver, drain, run_arrivals

pytestmark = pytest.mark.real_model

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "1, 2, 3, 4,",
    "Once upon a time, in a land far away, there lived a dragon who loved to bake bread. Every morning",
    "def fibonacci(n):",
    "Q: What is the boiling point of water? A:",
]
SETTINGS = [
    dict(sampling=SamplingParams(temperature=0.0)),
    dict(sampling=SamplingParams(temperature=0.9, top_p=0.9, seed=7)),
    dict(sampling=SamplingParams(temperature=0.0, repetition_penalty=1.3), logprobs=True, top_logprobs=3),
    dict(sampling=SamplingParams(temperature=0.7, top_k=20, min_p=0.05, presence_penalty=0.5, seed=11)),
    dict(sampling=SamplingParams(temperature=0.0), stops=("\n\n",)),
    dict(sampling=SamplingParams(temperature=1.0, seed=3, logit_bias={13: -5.0}), logprobs=True),
]


@pytest.fixture(scope="module")
def runtime():
    loaded, tokenizer = load_model_and_tokenizer(fetch_model("smollm2"), dtype="float32")
    return ModelRuntime.from_loaded(loaded, tokenizer), tokenizer


def _requests(tokenizer, n: int = len(PROMPTS)) -> list[GenerationRequest]:
    return [GenerationRequest(f"r{i}", tokenizer.encode(PROMPTS[i]), max_tokens=12 + 5 * i, **SETTINGS[i])
            for i in range(n)]


def test_batched_requests_yield_what_they_yield_alone(runtime):
    rt, tokenizer = runtime
    alone = []
    for request in _requests(tokenizer):
        run_arrivals(Scheduler(rt, SchedulerOptions(prefill_chunk_size=16, max_batch_size=1)), {0: [request]})
        alone.append(drain(request))

    batched = _requests(tokenizer)
    # Three at once, the others joining while those decode (their prefill chunks interleave with decode steps).
    scheduler = Scheduler(rt, SchedulerOptions(prefill_chunk_size=16, max_batch_size=16))
    run_arrivals(scheduler, {0: batched[:3], 4: batched[3:5], 9: batched[5:]})
    for i, request in enumerate(batched):
        ids, text, logprobs, final = drain(request)
        assert ids == alone[i][0], f"request {i}"
        assert text == alone[i][1]
        assert logprobs == pytest.approx(alone[i][2], abs=1e-4)
        assert final.finish_reason == alone[i][3].finish_reason
        assert final.completion_tokens == alone[i][3].completion_tokens


def test_admission_waits_for_the_kv_budget_and_refuses_what_never_fits(runtime):
    rt, tokenizer = runtime
    requests = _requests(tokenizer, 3)
    scheduler = Scheduler(rt, SchedulerOptions(prefill_chunk_size=64, max_batch_size=16))
    reserved = [len(r.prompt_ids) + r.max_tokens for r in requests]
    scheduler.budget.budget_bytes = scheduler.budget.need(reserved[:2])  # two fit together, never three
    for request in requests:
        scheduler.add(request)
    deliver(scheduler.step())
    assert scheduler.admitted == requests[:2] and list(scheduler.waiting) == requests[2:]
    run_arrivals(scheduler, {})
    assert all(drain(r)[3].completion_tokens > 0 for r in requests)

    huge = GenerationRequest("huge", tokenizer.encode("Hi"), SamplingParams(temperature=0.0), max_tokens=100_000)
    scheduler.add(huge)
    run_arrivals(scheduler, {})
    with pytest.raises(ResourceExhausted, match="KV cache"):
        drain(huge)
