"""Speculative decoding through the real scheduler and runner: with n-gram drafting the requests yield exactly what
they yield without it (tokens, text, logprobs, finish), batched with rows joining and leaving, whatever ends them
inside an accepted run (a stop string, max_tokens, a stop token), and a request cancelled during a verify step."""

from __future__ import annotations

import numpy as np
import pytest

from mlxd.engine import scheduler as scheduler_module
from mlxd.engine.request import FinishReason, GenerationRequest
from mlxd.engine.runner import Runner
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import Phase, Scheduler, SchedulerOptions
from mlxd.generation.params import SamplingParams
from tests.helpers.engine_runs import drain, run, run_arrivals
from tests.helpers.parity import fixture_runtime

SAMPLINGS = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.9, top_p=0.9, seed=7),
             SamplingParams(temperature=0.0, repetition_penalty=1.2), SamplingParams(temperature=0.7, top_k=20, seed=1)]
PLAIN = SchedulerOptions(prefill_chunk_size=8, max_batch_size=8)
SPECULATIVE = SchedulerOptions(prefill_chunk_size=8, max_batch_size=8, speculate="ngram", speculate_depth=4,
                               speculate_adaptive=False)


@pytest.fixture(scope="module", params=["llama", "gemma3_text", "gpt_oss"])
def runtime(request):
    return fixture_runtime(request.param)


def _prompt(length: int, seed: int) -> list[int]:
    """A random phrase said twice: the second time gives n-gram lookup something to find."""
    phrase = np.random.default_rng(seed).integers(3, 317, length).tolist()
    return phrase + phrase[: length // 2]


def _requests(**extra) -> list[GenerationRequest]:
    return [GenerationRequest(f"r{i}", _prompt(n, i), SAMPLINGS[i % len(SAMPLINGS)], max_tokens=14 + 3 * i,
                              ignore_eos=True, logprobs=True, **extra) for i, n in enumerate([6, 17, 3, 25, 9])]


def _outputs(requests: list[GenerationRequest]) -> list[tuple]:
    return [drain(request) for request in requests]


def _assert_same(got: list[tuple], want: list[tuple]) -> None:
    for i, ((ids, text, logprobs, final), (ids0, text0, logprobs0, final0)) in enumerate(zip(got, want)):
        assert ids == ids0, f"request {i}"
        assert text == text0
        assert logprobs == pytest.approx(logprobs0, abs=1e-4)
        assert (final.finish_reason, final.completion_tokens) == (final0.finish_reason, final0.completion_tokens)


def test_ngram_speculation_yields_the_plain_output(runtime):
    arrivals = {0: slice(None, 2), 3: slice(2, 4), 6: slice(4, None)}
    plain, speculative = _requests(), _requests()
    run_arrivals(Scheduler(runtime, PLAIN), {step: plain[rows] for step, rows in arrivals.items()})
    scheduler = Scheduler(runtime, SPECULATIVE)
    steps = _count_verify_steps(scheduler)
    run_arrivals(scheduler, {step: speculative[rows] for step, rows in arrivals.items()})
    assert steps, "no step verified drafts"
    _assert_same(_outputs(speculative), _outputs(plain))


def test_a_request_can_turn_speculation_off(runtime):
    scheduler = Scheduler(runtime, SPECULATIVE)
    steps = _count_verify_steps(scheduler)
    run(scheduler, *_requests(speculation=0))
    assert not steps


def test_requests_with_speculation_off_share_an_adaptive_batch(runtime):
    """The adaptive depth judges the batch's width over the rows that draft: a row whose request turned speculation
    off (not the speculator's) rides along in plain and verify steps alike, and every output is the plain one."""
    plain = _requests()
    run(Scheduler(runtime, PLAIN), *plain)
    mixed = [GenerationRequest(r.request_id, r.prompt_ids, r.sampling, max_tokens=r.max_tokens, ignore_eos=True,
                               logprobs=True, speculation=0 if i % 2 else None) for i, r in enumerate(_requests())]
    adaptive = SchedulerOptions(prefill_chunk_size=8, max_batch_size=8, speculate="ngram", speculate_depth=4)
    run(Scheduler(runtime, adaptive), *mixed)
    _assert_same(_outputs(mixed), _outputs(plain))


def test_ends_inside_an_accepted_run_are_exact(runtime):
    """max_tokens and a stop token that fall inside a verify step's accepted run end the request there."""
    for seed in range(10):  # the first prompt whose output accepts drafts (random tiny models loop, mostly)
        scheduler = Scheduler(runtime, SPECULATIVE)
        runs = _record_runs(scheduler)
        (request,) = _ending_requests(seed)
        run(scheduler, request)
        ids = drain(request)[0]
        if runs:
            break
    inside = [p for start, length in runs for p in range(start, start + length - 1)]  # tokens follow in the run
    assert inside, f"no verify step accepted a draft: {runs}"
    # A stop token first generated inside a run (drafts copy the prompt too, so one exists in most outputs).
    fresh = [p for p in inside if ids[p] not in ids[:p]]
    ends = [(inside[0], dict(max_tokens=inside[0] + 1))]
    ends += [(fresh[0], dict(stop_token_ids=frozenset({ids[fresh[0]]})))] if fresh else []
    for position, extra in ends:
        plain, speculative = _ending_requests(seed, **extra), _ending_requests(seed, **extra)
        run(Scheduler(runtime, PLAIN), *plain)
        run(Scheduler(runtime, SPECULATIVE), *speculative)
        got = _outputs(speculative)
        _assert_same(got, _outputs(plain))
        assert len(got[0][0]) == position + 1  # it ended inside the run


@pytest.mark.parametrize("plain_while_prefilling", [True, False])
def test_no_drafts_while_a_request_is_prefilling(runtime, monkeypatch, plain_while_prefilling):
    """A verify step beside a prefill chunk delays the prefilling request's first token (scheduler.py
    PLAIN_WHILE_PREFILLING): the rows decoding draft before it comes and after its prompt is in, not while."""
    monkeypatch.setattr(scheduler_module, "PLAIN_WHILE_PREFILLING", plain_while_prefilling)
    scheduler = Scheduler(runtime, SPECULATIVE)
    decoding = GenerationRequest("decoding", _prompt(12, 1), SAMPLINGS[0], max_tokens=60, ignore_eos=True)
    arriving = GenerationRequest("arriving", _prompt(60, 2), SAMPLINGS[0], max_tokens=8, ignore_eos=True)
    steps: list[tuple[bool, bool]] = []  # (the step verified drafts, a request was prefilling)
    step = scheduler._runner.step

    def recording(drafts=None):
        steps.append((bool(drafts), any(live.phase is Phase.PREFILL for live in scheduler._admitted)))
        return step(drafts)

    scheduler._runner.step = recording  # type: ignore[method-assign]
    run_arrivals(scheduler, {0: [decoding], 6: [arriving]})
    prefilling = [verified for verified, prefill in steps if prefill]
    assert len(prefilling) >= 10  # the 90-token prompt's chunks of 8 beside decode steps
    assert any(verified for verified, prefill in steps if not prefill)
    assert any(prefilling) is not plain_while_prefilling
    plain = [GenerationRequest(r.request_id, r.prompt_ids, r.sampling, max_tokens=r.max_tokens, ignore_eos=True)
             for r in (decoding, arriving)]
    run_arrivals(Scheduler(runtime, PLAIN), {0: plain[:1], 6: plain[1:]})
    assert [drain(r)[0] for r in (decoding, arriving)] == [drain(r)[0] for r in plain]


def _ending_requests(seed: int, **extra) -> list[GenerationRequest]:
    options = {"max_tokens": 40, **extra}
    return [GenerationRequest("r", _prompt(12, seed), SAMPLINGS[0], ignore_eos=True, **options)]


def _record_runs(scheduler: Scheduler) -> list[tuple[int, int]]:
    """(first token's index, length) of every run a verify step returns for the scheduler's single row."""
    runs: list[tuple[int, int]] = []
    seen = [0]
    runner = scheduler._runner
    step, flush = runner.step, runner.flush

    def recording(results):
        for result in results:
            if len(result.tokens) > 1:
                runs.append((seen[0], len(result.tokens)))
            seen[0] += len(result.tokens)
        return results

    runner.step = lambda drafts=None: recording(step(drafts))  # type: ignore[method-assign]
    runner.flush = lambda: recording(flush())  # type: ignore[method-assign]
    return runs


def test_a_request_cancelled_during_a_verify_step_ends_cancelled(runtime):
    requests = _requests()
    runner = _CancellingRunner(runtime, requests[1])
    run(Scheduler(runtime, SPECULATIVE, runner), *requests)
    plain = _requests()
    run(Scheduler(runtime, PLAIN), *plain)
    ids, _, _, final = drain(requests[1])
    assert final.finish_reason is FinishReason.CANCELLED
    assert ids == drain(plain[1])[0][:len(ids)]
    assert not runner.has_work()
    _assert_same(_outputs(requests[2:]), _outputs(plain[2:]))


class _CancellingRunner(Runner):
    """Cancels `victim` while the first verify step that drafts for several rows runs."""

    def __init__(self, runtime: ModelRuntime, victim: GenerationRequest) -> None:
        super().__init__(runtime.model, runtime.vocab_size)
        self.victim = victim

    def step(self, drafts=None):
        if drafts and len(drafts) > 1:
            self.victim.cancel.cancel("client left")
        return super().step(drafts)


def _count_verify_steps(scheduler: Scheduler) -> list[int]:
    steps: list[int] = []
    step = scheduler._runner.step

    def counting(drafts=None):
        if drafts:
            steps.append(len(drafts))
        return step(drafts)

    scheduler._runner.step = counting  # type: ignore[method-assign]
    return steps
