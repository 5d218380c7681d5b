"""Nemotron-H (Mamba-2 states and one attention layer's keys in the cache; MLP and MoE layers own none) through the
real scheduler and runner: batched rows of mixed lengths, joining and leaving mid-stream, yield what each yields
alone; a parked row keeps its states; a prefix-cache hit (exact-length snapshots only) yields the cold tokens and
reports the tokens it served; the KV budget counts the Mamba-2 states per row and the attention keys per token."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxd.engine.request import EventQueue, FinalEvent, GenerationRequest
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.generation.params import SamplingParams
from mlxd.loading.model_source import load_model_and_tokenizer
from tests.helpers.engine_runs import drain, run, run_arrivals
from tests.helpers.parity import PARITY

ARCH = "nemotron_h"
GREEDY = SamplingParams(temperature=0.0)
SETTINGS = [
    dict(sampling=GREEDY),
    dict(sampling=SamplingParams(temperature=0.9, top_p=0.9, seed=7)),
    dict(sampling=SamplingParams(temperature=0.0, repetition_penalty=1.3), logprobs=True, top_logprobs=3),
    dict(sampling=SamplingParams(temperature=0.7, top_k=20, seed=11)),
    dict(sampling=GREEDY, logprobs=True),
    dict(sampling=SamplingParams(temperature=1.0, seed=3)),
]
LENGTHS = [1, 2, 17, 40, 70, 140]  # a one-token prompt joins with empty states; 140 spans nine 16-token SSD chunks


@pytest.fixture(scope="module")
def runtime():
    loaded, tokenizer = load_model_and_tokenizer(PARITY / ARCH, dtype="float32")
    fixture = mx.load(str(PARITY / ARCH / "expected.safetensors"))["input_ids"][0].tolist()
    # The fixture's 45-token prompt, then ordinary tokens (3..316) to 150.
    more = mx.random.randint(3, 317, (150 - len(fixture),), key=mx.random.key(20)).tolist()
    return ModelRuntime.from_loaded(loaded, tokenizer), fixture + more


def _requests(prompt: list[int]) -> list[GenerationRequest]:
    # Distinct prompts: each starts at another offset of the source.
    return [GenerationRequest(f"r{i}", prompt[i:i + n], max_tokens=6 + 3 * i, ignore_eos=True, **SETTINGS[i])
            for i, n in enumerate(LENGTHS)]


def test_batched_rows_yield_what_they_yield_alone(runtime):
    rt, prompt = runtime
    alone = []
    for request in _requests(prompt):
        run(Scheduler(rt, SchedulerOptions(prefill_chunk_size=16, max_batch_size=1)), request)
        alone.append(drain(request))
    batched = _requests(prompt)
    scheduler = Scheduler(rt, SchedulerOptions(prefill_chunk_size=16, max_batch_size=16))
    run_arrivals(scheduler, {0: batched[:3], 4: batched[3:5], 11: batched[5:]})
    for i, request in enumerate(batched):
        ids, _, logprobs, final = drain(request)
        assert ids == alone[i][0], f"request {i}"
        assert logprobs == pytest.approx(alone[i][2], abs=1e-4)
        assert final.completion_tokens == alone[i][3].completion_tokens


class _SlowReader(EventQueue):
    """A stream whose client reads nothing until told to."""

    reading = False

    def backlog(self) -> int:
        return 0 if self.reading else super().backlog()


def test_a_parked_row_keeps_its_states(runtime):
    """A row whose reader falls behind leaves the batch with its states and comes back to the same tokens."""
    rt, prompt = runtime
    alone = GenerationRequest("alone", prompt[:30], GREEDY, max_tokens=24, ignore_eos=True)
    run(Scheduler(rt, SchedulerOptions(prefill_chunk_size=16)), alone)
    slow = GenerationRequest("slow", prompt[:30], GREEDY, max_tokens=24, ignore_eos=True, events=_SlowReader())
    reader = _SlowReader()
    reader.reading = True  # the other row's client keeps up
    fast = GenerationRequest("fast", prompt[40:57], GREEDY, max_tokens=24, ignore_eos=True, events=reader)
    scheduler = Scheduler(rt, SchedulerOptions(prefill_chunk_size=16, max_batch_size=4, max_stream_backlog=6))
    for request in (slow, fast):
        scheduler.add(request)
    for _ in range(50):
        for request, event in scheduler.step():
            request.events.put(event)
    assert 6 <= slow.events.backlog() <= 8 and isinstance(fast.events.drain()[-1], FinalEvent)
    slow.events.reading = True
    run(scheduler)
    assert drain(slow)[0] == drain(alone)[0]


def _serve(scheduler: Scheduler, ids: list[int], n: int = 12) -> tuple[list[int], int]:
    request = GenerationRequest("r", ids, GREEDY, max_tokens=n, ignore_eos=True)
    run(scheduler, request)
    tokens, _, _, final = drain(request)
    return tokens, final.cached_tokens


def _cold(rt: ModelRuntime, ids: list[int], n: int = 12) -> list[int]:
    return _serve(Scheduler(rt, SchedulerOptions(prefill_chunk_size=32)), ids, n)[0]


def test_prefix_cache_serves_exact_snapshots_only_with_the_cold_tokens(runtime):
    rt, prompt = runtime
    first, other = prompt[:90], prompt[:50] + prompt[100:140]
    scheduler = Scheduler(rt, SchedulerOptions(prefill_chunk_size=32, prefix_cache_bytes=64 << 20))
    answer, cached = _serve(scheduler, first, n=20)
    assert cached == 0
    # The stored prompt shares 50 tokens with this one, but a Mamba-2 state cannot be rewound to them.
    tokens, cached = _serve(scheduler, other)
    assert cached == 0 and tokens == _cold(rt, other)
    tokens, cached = _serve(scheduler, first)  # the same prompt again: its snapshot, at its exact length
    assert cached == len(first) - 1
    assert tokens == _cold(rt, first)
    # The next turn of a chat resends prompt and answer: the answer's snapshot (at what the row held) serves it.
    turn = first + answer + prompt[140:150]
    tokens, cached = _serve(scheduler, turn)
    # The answer's last token never ran through the model (the row left once it was sampled).
    assert cached == len(first) + len(answer) - 1
    assert tokens == _cold(rt, turn)
    assert scheduler.prefix_cache.hits == 2


def test_snapshots_within_a_prompt_serve_prompts_that_share_part_of_it(runtime):
    """Every `recurrent_snapshot_period` positions of a prefill a snapshot is stored (chunks stop there), so a
    prompt sharing only the first 70 tokens of a stored one reuses 64 of them."""
    rt, prompt = runtime
    options = SchedulerOptions(prefill_chunk_size=20, prefix_cache_bytes=64 << 20, recurrent_snapshot_period=32)
    scheduler = Scheduler(rt, options)
    first, other = prompt[:100], prompt[:70] + prompt[120:150]
    assert _serve(scheduler, first)[1] == 0
    assert scheduler.prefix_cache.entries == 4  # at 32, 64, 96 and the prompt's 99
    tokens, cached = _serve(scheduler, other)
    assert cached == 64
    assert tokens == _cold(rt, other)


def test_kv_budget_counts_mamba_states_per_row(runtime):
    rt, _ = runtime
    layout = Scheduler(rt, SchedulerOptions()).budget.layout
    assert len(rt.model.make_cache()) == 3  # two Mamba-2 layers and the attention layer; MLP and MoE own none
    # The attention layer: 2 kv heads x 16 dims, keys and values, float32, per token.
    assert layout.layers == ((2 * 2 * 16 * 4, None),)
    # Each Mamba-2 layer, whatever the length: conv state [3, 128] and SSM state [8, 8, 16], float32.
    assert layout.row_bytes == 2 * (3 * 128 + 8 * 8 * 16) * 4
