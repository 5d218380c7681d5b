"""The prefix cache in the engine, on real models: a hit yields exactly the tokens a cold run yields (greedy and
seeded sampling), reports cached_tokens, the next turn of a chat finds the previous prompt and answer, and a
sliding-window model (Gemma 3, window 512) reuses a rotated snapshot only for a prompt that starts with all of it."""

from __future__ import annotations

import pytest

from mlxd.demo_models import fetch_model
from mlxd.engine.request import GenerationRequest
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.generation.params import SamplingParams
from mlxd.loading.model_source import load_model_and_tokenizer
from tests.helpers.engine_runs import drain, run

pytestmark = pytest.mark.real_model

SYSTEM = ("You are a careful assistant. Answer briefly, cite no sources, and never invent facts. "
          "If a question is ambiguous, say which reading you answer. ") * 3
SAMPLINGS = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.8, top_p=0.95, seed=1234)]


def _runtime(name: str) -> tuple[ModelRuntime, object]:
    loaded, tokenizer = load_model_and_tokenizer(fetch_model(name), dtype="float32")
    return ModelRuntime.from_loaded(loaded, tokenizer), tokenizer


@pytest.fixture(scope="module")
def smollm2():
    return _runtime("smollm2")


def _serve(scheduler: Scheduler, ids: list[int], sampling: SamplingParams, n: int = 16) -> tuple[list[int], int]:
    request = GenerationRequest("r", ids, sampling, max_tokens=n, ignore_eos=True)
    run(scheduler, request)
    tokens, _, _, final = drain(request)
    return tokens, final.cached_tokens


def _cold(runtime: ModelRuntime, ids: list[int], sampling: SamplingParams) -> list[int]:
    return _serve(Scheduler(runtime, SchedulerOptions(prefill_chunk_size=64, prefix_cache_bytes=0)), ids, sampling)[0]


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "seeded"])
def test_shared_prefix_and_repeated_prompt_hit_with_cold_tokens(smollm2, sampling):
    runtime, tokenizer = smollm2
    first = tokenizer.encode(SYSTEM + "Question: what is the capital of Italy?")
    second = tokenizer.encode(SYSTEM + "Question: how many legs has a spider?")
    shared = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    scheduler = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=64, prefix_cache_bytes=256 << 20))

    assert _serve(scheduler, first, sampling)[1] == 0  # nothing stored yet
    tokens, cached = _serve(scheduler, second, sampling)
    assert cached == shared  # the stored prompt, trimmed to what both share
    assert tokens == _cold(runtime, second, sampling)
    tokens, cached = _serve(scheduler, first, sampling)  # a chat resending the same prompt
    assert cached == len(first) - 1
    assert tokens == _cold(runtime, first, sampling)
    assert scheduler.prefix_cache.hits == 2


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "seeded"])
def test_next_chat_turn_gets_prompt_and_answer_from_the_cache(smollm2, sampling):
    """A finished request leaves the KV of its prompt and answer: the next turn, which resends both, prefills
    only what it adds, and yields the tokens of a cold run."""
    runtime, tokenizer = smollm2
    first = tokenizer.encode(SYSTEM + "Question: what is the capital of Italy?")
    scheduler = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=64, prefix_cache_bytes=256 << 20))
    answer, _ = _serve(scheduler, first, sampling, n=20)
    follow_up = first + answer + tokenizer.encode(" Question: and of France?")
    tokens, cached = _serve(scheduler, follow_up, sampling)
    # Every prompt and answer token that ran through the model; the answer's last token never did.
    assert cached == len(first) + len(answer) - 1
    assert tokens == _cold(runtime, follow_up, sampling)
    # The longer snapshot replaced the prompt's own (it trims to it): one entry per conversation so far.
    assert scheduler.prefix_cache.entries == 1


def test_short_answers_leave_no_answer_snapshot(smollm2):
    runtime, tokenizer = smollm2
    scheduler = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=64, prefix_cache_bytes=256 << 20))
    first = tokenizer.encode(SYSTEM)
    answer, _ = _serve(scheduler, first, SamplingParams(temperature=0.0), n=4)
    _, cached = _serve(scheduler, first + answer + tokenizer.encode(" Go on."), SamplingParams(temperature=0.0))
    assert cached == len(first) - 1  # the prompt's snapshot only: 4 answer tokens are cheaper to prefill again


def test_prompt_logprobs_and_short_prompts_bypass_the_cache(smollm2):
    runtime, tokenizer = smollm2
    scheduler = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=64, prefix_cache_bytes=256 << 20))
    ids = tokenizer.encode(SYSTEM)
    request = GenerationRequest("p", ids, SamplingParams(temperature=0.0), max_tokens=2, prompt_logprobs=True)
    run(scheduler, request)
    assert scheduler.prefix_cache.entries == 0
    _serve(scheduler, ids[:8], SamplingParams(temperature=0.0), n=2)
    assert scheduler.prefix_cache.entries == 0


def test_sliding_window_model_reuses_a_rotated_snapshot_only_whole():
    runtime, tokenizer = _runtime("gemma3-270m")
    long_text = " ".join(f"item {i} is {i * 7 % 13}." for i in range(120))  # past the 512-token window
    first = tokenizer.encode(long_text + " Which item is 5?")
    second = tokenizer.encode(long_text + " Which item is 9?")
    assert len(first) > 600
    greedy = SamplingParams(temperature=0.0)
    scheduler = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=256, prefix_cache_bytes=512 << 20))
    _serve(scheduler, first, greedy, n=8)
    tokens, cached = _serve(scheduler, second, greedy, n=8)
    assert cached == 0  # the stored prompt rotated past its window: no prefix of it can be rebuilt
    tokens, cached = _serve(scheduler, first, greedy, n=8)
    assert cached == len(first) - 1
    cold = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=256, prefix_cache_bytes=0))
    assert tokens == _serve(cold, first, greedy, n=8)[0]
    # Its sliding-window layers may have dropped a leaving row's oldest keys: no snapshot of prompt and answer.
    answer, _ = _serve(scheduler, first, greedy, n=20)
    _, cached = _serve(scheduler, first + answer, greedy, n=2)
    assert cached == len(first) - 1
