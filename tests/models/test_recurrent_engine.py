"""Models with recurrent state in the cache (Qwen3.5's gated delta, dense and MoE, and Qwen3-Next's; Nemotron-H's
Mamba-2 beside one attention layer) through the real scheduler and runner: batched rows of mixed lengths, joining
and leaving mid-stream, yield what each yields alone; a parked row keeps its states; a prefix-cache hit
(exact-length snapshots only) yields the cold tokens and reports the tokens it served; the KV budget counts the
recurrent states per row and the attention keys per token. What differs between the architectures is data in
ARCHES."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import pytest

from mlxd.engine.request import EventQueue, FinalEvent, GenerationRequest
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.generation.params import SamplingParams
from mlxd.loading.model_source import load_model_and_tokenizer
from tests.helpers.engine_runs import assert_batched_rows_yield_what_they_yield_alone, drain, run, serve
from tests.helpers.parity import PARITY


@dataclass(frozen=True)
class Arch:
    name: str
    longest: int  # the last batched prompt's length
    caches: int  # what make_cache returns: one per layer that owns state
    attention_layers: int  # the budget's per-token layers
    # Exact budget figures, where the test states them: the per-token layers and the per-row state bytes.
    layers: tuple[tuple[int, int | None], ...] | None = None
    row_bytes: int | None = None


ARCHES = [
    # Two full-attention layers and two recurrent ones; the fixture's prompt has 150 tokens.
    Arch("qwen3_5", longest=150, caches=4, attention_layers=2),
    Arch("qwen3_5_moe", longest=150, caches=4, attention_layers=2),
    Arch("qwen3_next", longest=150, caches=4, attention_layers=2),
    # Two Mamba-2 layers and the attention layer; MLP and MoE layers own none. 140 spans nine 16-token SSD chunks.
    # The attention layer: 2 kv heads x 16 dims, keys and values, float32, per token. Each Mamba-2 layer, whatever
    # the length: conv state [3, 128] and SSM state [8, 8, 16], float32.
    Arch("nemotron_h", longest=140, caches=3, attention_layers=1,
         layers=((2 * 2 * 16 * 4, None),), row_bytes=2 * (3 * 128 + 8 * 8 * 16) * 4),
]
PROMPT_TOKENS = 150
GREEDY = SamplingParams(temperature=0.0)
SETTINGS = [
    dict(sampling=GREEDY),
    dict(sampling=SamplingParams(temperature=0.9, top_p=0.9, seed=7)),
    dict(sampling=SamplingParams(temperature=0.0, repetition_penalty=1.3), logprobs=True, top_logprobs=3),
    dict(sampling=SamplingParams(temperature=0.7, top_k=20, seed=11)),
    dict(sampling=GREEDY, logprobs=True),
    dict(sampling=SamplingParams(temperature=1.0, seed=3)),
]


def _lengths(arch: Arch) -> list[int]:
    return [1, 2, 17, 40, 70, arch.longest]  # a one-token prompt joins with empty states


def _prompt(name: str) -> list[int]:
    """The fixture's prompt, then ordinary tokens (3..316) to 150 where it is shorter (Nemotron-H's 45)."""
    fixture = mx.load(str(PARITY / name / "expected.safetensors"))["input_ids"][0].tolist()
    if len(fixture) >= PROMPT_TOKENS:
        return fixture
    return fixture + mx.random.randint(3, 317, (PROMPT_TOKENS - len(fixture),), key=mx.random.key(20)).tolist()


@pytest.fixture(scope="module", params=ARCHES, ids=lambda arch: arch.name)
def arch(request) -> Arch:
    return request.param


@pytest.fixture(scope="module")
def runtime(arch):
    loaded, tokenizer = load_model_and_tokenizer(PARITY / arch.name, dtype="float32")
    return ModelRuntime.from_loaded(loaded, tokenizer), _prompt(arch.name)


def _requests(prompt: list[int], lengths: list[int]) -> list[GenerationRequest]:
    # Distinct prompts: each starts at another offset of the source.
    return [GenerationRequest(f"r{i}", prompt[i:i + n], max_tokens=6 + 3 * i, ignore_eos=True, **SETTINGS[i])
            for i, n in enumerate(lengths)]


def test_batched_rows_yield_what_they_yield_alone(runtime, arch):
    rt, prompt = runtime
    assert_batched_rows_yield_what_they_yield_alone(
        rt, lambda: _requests(prompt, _lengths(arch)), alone=SchedulerOptions(prefill_chunk_size=16, max_batch_size=1),
        batched=SchedulerOptions(prefill_chunk_size=16, max_batch_size=16),
        arrivals={0: slice(None, 3), 4: slice(3, 5), 11: slice(5, None)})


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
    return serve(scheduler, ids, GREEDY, max_tokens=n)


def _cold(rt: ModelRuntime, ids: list[int], n: int = 12) -> list[int]:
    return _serve(Scheduler(rt, SchedulerOptions(prefill_chunk_size=32)), ids, n)[0]


def test_prefix_cache_serves_exact_snapshots_only_with_the_cold_tokens(runtime):
    rt, prompt = runtime
    first, other = prompt[:90], prompt[:50] + prompt[100:140]
    scheduler = Scheduler(rt, SchedulerOptions(prefill_chunk_size=32, prefix_cache_bytes=64 << 20))
    answer, cached = _serve(scheduler, first, n=20)
    assert cached == 0
    # The stored prompt shares 50 tokens with this one, but a recurrent state cannot be rewound to them.
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
    plain = Scheduler(rt, SchedulerOptions(prefill_chunk_size=20, prefix_cache_bytes=64 << 20,
                                           recurrent_snapshot_period=0))
    _serve(plain, first)
    assert _serve(plain, other)[1] == 0 and plain.prefix_cache.entries == 2  # 99, and the next prompt's


def test_kv_budget_counts_recurrent_states_per_row(runtime, arch):
    rt, _ = runtime
    layout = Scheduler(rt, SchedulerOptions()).budget.layout
    assert len(rt.model.make_cache()) == arch.caches
    assert len(layout.layers) == arch.attention_layers and layout.row_bytes > 0
    assert layout.bytes_for(1001) - layout.bytes_for(1) == 1000 * sum(b for b, _ in layout.layers)
    if arch.layers is not None:
        assert layout.layers == arch.layers
    if arch.row_bytes is not None:
        assert layout.row_bytes == arch.row_bytes
