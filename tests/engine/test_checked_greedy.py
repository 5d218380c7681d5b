"""Constrained greedy rows decoded as free ones and checked against their grammar (engine/checked_greedy.py): the
tokens are those of masking, refusals included (each replaced by the masked argmax), through the batch's changes
between checking and masking, and the policy picks checking only where it is exact: unpipelined steps of plainly
greedy rows without logprobs."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mlxd.engine import checked_greedy
from mlxd.engine.mask_thread import MaskThread
from mlxd.engine.request import FinishReason, GenerationRequest
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.generation.params import SamplingParams
from tests.engine.test_constrained_rows import AllowedSets
from tests.helpers.engine_runs import drain, run_arrivals
from tests.helpers.fakes import VOCAB, fake_runtime

GREEDY = SamplingParams(temperature=0.0)
PROMPTS = [[3, 9, 4], [7] * 20, [5, 6], [11, 12, 13, 14, 15, 16, 17, 18, 19]]


def _half_the_vocabulary(seed: int, steps: int) -> list[set[int]]:
    """Step by step, a random half of the ids: the model's argmax is refused about every other step."""
    rng = np.random.default_rng(seed)
    return [set(rng.choice(VOCAB, VOCAB // 2, replace=False).tolist()) for _ in range(steps)]


def _requests(n: int = 14) -> list[GenerationRequest]:
    out = []
    for i, prompt in enumerate(PROMPTS):
        constraint = AllowedSets(_half_the_vocabulary(i, n)) if i != 2 else None  # one free row beside
        out.append(GenerationRequest(f"r{i}", prompt, GREEDY, max_tokens=n, ignore_eos=True, constraint=constraint,
                                     logprobs=i == 2))
    return out


def _served(monkeypatch, enabled: bool, pipelined: bool, arrivals: dict[int, slice]) -> list[tuple]:
    with monkeypatch.context() as patch:
        patch.setattr(checked_greedy, "ENABLED", enabled)
        requests = _requests()
        options = SchedulerOptions(prefill_chunk_size=4, max_batch_size=8, pipelined=pipelined)
        run_arrivals(Scheduler(fake_runtime(), options), {step: requests[rows] for step, rows in arrivals.items()})
        return [drain(r) for r in requests]


def _counting_refusals(monkeypatch) -> list[int]:
    corrected, counted = checked_greedy.corrected, []

    def counting(logits, indices, masks):
        counted.append(len(indices))
        return corrected(logits, indices, masks)
    monkeypatch.setattr(checked_greedy, "corrected", counting)
    return counted


@pytest.mark.parametrize("pipelined", [True, False])
def test_checked_rows_give_the_masked_tokens_refusals_included(monkeypatch, pipelined):
    """Rows joining at different steps, one free beside them (with logprobs), about half of every constrained
    row's argmaxes refused: unpipelined every step checks (each refusal corrected), pipelined every step masks."""
    arrivals = {0: slice(0, 2), 3: slice(2, 4)}
    masked = _served(monkeypatch, False, pipelined, arrivals)
    refusals = _counting_refusals(monkeypatch)
    checked = _served(monkeypatch, True, pipelined, arrivals)
    assert [c[:2] for c in checked] == [m[:2] for m in masked]
    assert checked[2][2] == pytest.approx(masked[2][2], abs=1e-5)
    assert all(c[3].finish_reason is FinishReason.STOP for i, c in enumerate(checked) if i != 2)
    assert (sum(refusals) >= 3) if not pipelined else not refusals, refusals


def test_a_sampled_constrained_row_joining_turns_the_batch_to_masks_and_back(monkeypatch):
    """An unpipelined checking batch that a seeded sampled constrained row joins masks while it is there (the
    checking step before read within its call); after it ends the batch checks again, the last masked step read as
    the first checking one is built on it. Every row's tokens are those of masking throughout."""
    def requests() -> list[GenerationRequest]:
        out = [GenerationRequest(f"g{i}", PROMPTS[i], GREEDY, max_tokens=14, ignore_eos=True,
                                 constraint=AllowedSets(_half_the_vocabulary(10 + i, 14))) for i in range(2)]
        out.append(GenerationRequest("s", PROMPTS[3], SamplingParams(temperature=0.9, seed=4), max_tokens=4,
                                     ignore_eos=True, constraint=AllowedSets(_half_the_vocabulary(20, 4))))
        return out

    def served(enabled: bool) -> list[tuple]:
        with monkeypatch.context() as patch:
            patch.setattr(checked_greedy, "ENABLED", enabled)
            made = requests()
            options = SchedulerOptions(prefill_chunk_size=4, max_batch_size=4, pipelined=False)
            run_arrivals(Scheduler(fake_runtime(), options), {0: made[:2], 5: made[2:]})
            return [drain(r)[:2] for r in made]

    masked = served(False)
    checked_steps: list[bool] = []
    checks = checked_greedy.checks
    monkeypatch.setattr(checked_greedy, "checks", lambda *a: checked_steps.append(checks(*a)) or checked_steps[-1])
    assert served(True) == masked
    assert True in checked_steps and False in checked_steps
    assert checked_steps[-1] is True  # checking again once the sampled row is gone


class _Row:
    def __init__(self, sampling: SamplingParams, constraint: object | None = None,
                 top_logprobs: int | None = None) -> None:
        from mlxd.generation.sampling import Sampler
        self.sampler = Sampler(sampling, VOCAB, [1])
        self.constraint, self.failure, self.top_logprobs = constraint, None, top_logprobs


def test_only_unpipelined_steps_of_plainly_greedy_rows_without_logprobs_check(monkeypatch):
    grammar = AllowedSets([{1}] * 4)
    two = [_Row(GREEDY, grammar), _Row(SamplingParams(temperature=0.7))]  # a sampled free row beside
    assert checked_greedy.checks(two, False)
    assert not checked_greedy.checks(two, True)  # pipelined (a GPU's): masks (session 52)
    assert not checked_greedy.checks([_Row(SamplingParams(temperature=0.7), grammar)], False)
    assert not checked_greedy.checks([_Row(GREEDY, grammar, top_logprobs=2)], False)
    monkeypatch.setattr(checked_greedy, "ENABLED", False)
    assert not checked_greedy.checks(two, False)


def test_a_greedy_row_takes_its_argmax_among_the_ids_its_grammar_knows():
    """A tokenizer narrower than the logits (a random-weight model carrying a real tokenizer): the ids past it are
    never allowed, so a checked row's argmax leaves them out rather than have them refused."""
    import mlx.core as mx

    class Narrow(AllowedSets):
        vocabulary = 8

    logits = mx.array(np.arange(2 * VOCAB, dtype=np.float32).reshape(2, VOCAB))  # the argmax is the last id
    narrow, free = _Row(GREEDY, Narrow([{1}] * 4)), _Row(GREEDY)
    assert mx.argmax(checked_greedy.argmax_logits(logits, [narrow, narrow]), axis=-1).tolist() == [7, 7]
    assert mx.argmax(checked_greedy.argmax_logits(logits, [narrow, free]), axis=-1).tolist() == [7, VOCAB - 1]
    assert checked_greedy.argmax_logits(logits, [free, free]) is logits


_HANDED_OFF = object()  # a grammar's holder from the hand-off until the mask thread's job starts


class _HeldByTheMaskThread(AllowedSets):
    """A grammar that fails when asked anything by another thread while the mask thread holds it (from the hand-off
    until its job ends), as llguidance's matcher can ("Already mutably borrowed")."""

    holder: object = None

    def _check(self) -> None:
        assert self.holder in (None, threading.current_thread()), "asked while the mask thread holds it"

    def fill_bitmask(self, out: np.ndarray) -> None:
        self._check()
        super().fill_bitmask(out)

    def consume(self, token: int) -> None:
        self._check()
        super().consume(token)

    def is_stopped(self) -> bool:
        self._check()
        return super().is_stopped()


@pytest.mark.parametrize("pipelined", [True, False])
def test_the_worker_leaves_the_grammars_alone_while_the_mask_thread_has_them(monkeypatch, pipelined):
    """A checking or masked step hands the grammars to the mask thread (tell, then fill) and asks them nothing until
    the masks are in: before the fix its argmax asked each row's grammar whether it goes on meanwhile, and a real
    matcher failed the request (INTERNAL, in CI's forced tool call). Every hand-off holds the grammars here from
    the moment it is made, so the race is met every step."""
    grammars = [_HeldByTheMaskThread([set(range(VOCAB))] * 10) for _ in range(2)]
    submit = MaskThread.submit

    def holding(thread, fn, *args):
        for g in grammars:
            g.holder = _HANDED_OFF

        def job(*job_args):
            for g in grammars:
                g.holder = threading.current_thread()
            try:
                return fn(*job_args)
            finally:
                for g in grammars:
                    g.holder = None
        return submit(thread, job, *args)

    monkeypatch.setattr(MaskThread, "submit", holding)
    requests = [GenerationRequest(f"r{i}", PROMPTS[i], GREEDY, max_tokens=10, ignore_eos=True, constraint=g)
                for i, g in enumerate(grammars)]
    run_arrivals(Scheduler(fake_runtime(), SchedulerOptions(prefill_chunk_size=4, pipelined=pipelined)),
                 {0: requests})
    assert [drain(r)[3].finish_reason for r in requests] == [FinishReason.STOP] * 2
