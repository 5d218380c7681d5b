"""Constrained greedy rows decoded as free ones and checked against their grammar (engine/checked_greedy.py): the
tokens are those of masking, refusals included (each replaced by the masked argmax; pipelined, the next forward
built again), through the batch's changes between checking and masking, and the policy picks checking only where
it is exact and cheap."""

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


def _served(monkeypatch, enabled: bool, pipelined: bool, arrivals: dict[int, slice], **settings) -> list[tuple]:
    with monkeypatch.context() as patch:
        patch.setattr(checked_greedy, "ENABLED", enabled)
        patch.setattr(checked_greedy, "PIPELINED", True)
        for name, value in settings.items():
            patch.setattr(checked_greedy, name, value)
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
@pytest.mark.parametrize("expected_refusals", [checked_greedy.EXPECTED_REFUSALS, 100.0])
def test_checked_rows_give_the_masked_tokens_refusals_included(monkeypatch, pipelined, expected_refusals):
    """Rows joining at different steps, one free beside them (with logprobs), about half of every constrained
    row's argmaxes refused; with the policy as it is a pipelined batch soon masks instead (its refusal rates are
    high), with 100 it checks every step (each refusal building the next forward again)."""
    arrivals = {0: slice(0, 2), 3: slice(2, 4)}
    masked = _served(monkeypatch, False, pipelined, arrivals)
    refusals = _counting_refusals(monkeypatch)
    checked = _served(monkeypatch, True, pipelined, arrivals, EXPECTED_REFUSALS=expected_refusals)
    assert [c[:2] for c in checked] == [m[:2] for m in masked]
    assert checked[2][2] == pytest.approx(masked[2][2], abs=1e-5)
    assert all(c[3].finish_reason is FinishReason.STOP for i, c in enumerate(checked) if i != 2)
    assert sum(refusals) >= 3, refusals


def test_a_sampled_constrained_row_joining_turns_the_batch_to_masks_and_back(monkeypatch):
    """A checked batch (every refusal checked) that a seeded sampled constrained row joins masks while it is there,
    the step before's checked tokens checked before the masked step is built on them; after it ends the batch
    checks again. Every row's tokens are those of masking throughout."""
    def requests() -> list[GenerationRequest]:
        out = [GenerationRequest(f"g{i}", PROMPTS[i], GREEDY, max_tokens=14, ignore_eos=True,
                                 constraint=AllowedSets(_half_the_vocabulary(10 + i, 14))) for i in range(2)]
        out.append(GenerationRequest("s", PROMPTS[3], SamplingParams(temperature=0.9, seed=4), max_tokens=4,
                                     ignore_eos=True, constraint=AllowedSets(_half_the_vocabulary(20, 4))))
        return out

    def served(enabled: bool) -> list[tuple]:
        with monkeypatch.context() as patch:
            patch.setattr(checked_greedy, "ENABLED", enabled)
            patch.setattr(checked_greedy, "PIPELINED", True)
            patch.setattr(checked_greedy, "EXPECTED_REFUSALS", 100.0)
            made = requests()
            run_arrivals(Scheduler(fake_runtime(), SchedulerOptions(prefill_chunk_size=4, max_batch_size=4)),
                         {0: made[:2], 5: made[2:]})
            return [drain(r)[:2] for r in made]

    masked = served(False)
    checked_steps: list[bool] = []
    checks = checked_greedy.checks
    monkeypatch.setattr(checked_greedy, "checks", lambda *a: checked_steps.append(checks(*a)) or checked_steps[-1])
    assert served(True) == masked
    assert True in checked_steps and False in checked_steps
    assert checked_steps[-1] is True  # checking again once the sampled row is gone


class _Row:
    def __init__(self, sampling: SamplingParams, constraint: object | None = None, top_logprobs: int | None = None,
                 refusal_rate: float = checked_greedy.PRIOR) -> None:
        from mlxd.generation.sampling import Sampler
        self.sampler = Sampler(sampling, VOCAB, [1])
        self.constraint, self.failure, self.top_logprobs, self.refusal_rate = constraint, None, top_logprobs, \
            refusal_rate


def test_only_plainly_greedy_rows_without_logprobs_are_checked_pipelined_only_alone_and_refused_rarely(monkeypatch):
    from mlxd.models.batch_cache import BatchKVCache, BatchPositions
    assert checked_greedy.PIPELINED  # GPU daemons check too (session 47)
    monkeypatch.setattr(checked_greedy, "PIPELINED", False)
    assert not checked_greedy.checks([_Row(GREEDY, AllowedSets([{1}]))], [BatchKVCache(BatchPositions(), None)],
                                     True)  # pipelined, switched off: masks
    monkeypatch.setattr(checked_greedy, "PIPELINED", True)
    caches = [BatchKVCache(BatchPositions(), None)]
    grammar = AllowedSets([{1}] * 4)
    assert checked_greedy.checks([_Row(GREEDY, grammar)], caches, True)
    two = [_Row(GREEDY, grammar), _Row(SamplingParams(temperature=0.7))]
    assert checked_greedy.checks(two, caches, False) and not checked_greedy.checks(two, caches, True)  # PIPELINED_ROWS
    assert not checked_greedy.could_check(two, caches, True)  # nor do its masked steps learn refusal rates
    assert not checked_greedy.checks([_Row(SamplingParams(temperature=0.7), grammar)], caches, False)
    assert not checked_greedy.checks([_Row(GREEDY, grammar, top_logprobs=2)], caches, False)
    assert not checked_greedy.checks([_Row(GREEDY, grammar)], [object()], False)  # a cache that cannot give back
    rare, often = _Row(GREEDY, grammar, refusal_rate=0.02), _Row(GREEDY, grammar, refusal_rate=0.5)
    assert checked_greedy.checks([rare], caches, True) and not checked_greedy.checks([often], caches, True)
    assert checked_greedy.checks([often], caches, False)  # unpipelined, a refusal costs no second build
    free = _Row(GREEDY)
    checked_greedy.learn([often, rare, free], [4, 3, 2], [4, 5, 9])  # masking kept often's argmax, not rare's
    assert often.refusal_rate == pytest.approx(0.5 * (1 - checked_greedy.LEARNING))
    assert rare.refusal_rate == pytest.approx(0.02 + checked_greedy.LEARNING * 0.98)
    assert free.refusal_rate == checked_greedy.PRIOR  # no grammar: nothing to learn


def test_a_masking_batch_learns_from_its_masked_steps_and_checks_again(monkeypatch):
    """Pipelined, rows whose argmax is refused about every other step soon mask; their masked steps still learn
    whether the argmax was allowed, and once their grammars allow everything the batch checks again, without a
    refused try. The tokens are those of masking throughout."""
    def requests() -> list[GenerationRequest]:
        return [GenerationRequest(f"g{i}", PROMPTS[i], GREEDY, max_tokens=40, ignore_eos=True,
                                  constraint=AllowedSets(_half_the_vocabulary(30 + i, 10) + [set(range(VOCAB))] * 30))
                for i in range(2)]

    def served(enabled: bool) -> list[tuple]:
        with monkeypatch.context() as patch:
            patch.setattr(checked_greedy, "ENABLED", enabled)
            patch.setattr(checked_greedy, "PIPELINED", True)
            patch.setattr(checked_greedy, "PIPELINED_ROWS", 4)  # the two rows may check together
            made = requests()
            run_arrivals(Scheduler(fake_runtime(), SchedulerOptions(prefill_chunk_size=4, max_batch_size=4)),
                         {0: made})
            return [drain(r)[:2] for r in made]

    masked = served(False)
    checked_steps: list[bool] = []
    checks = checked_greedy.checks
    monkeypatch.setattr(checked_greedy, "checks", lambda *a: checked_steps.append(checks(*a)) or checked_steps[-1])
    refusals = _counting_refusals(monkeypatch)
    assert served(True) == masked
    first_mask = checked_steps.index(False)
    assert True in checked_steps[first_mask:] and checked_steps[-1] is True, checked_steps
    assert sum(refusals) <= 4, refusals  # the masked steps told the policy: it did not try checking blind


def test_a_cache_restored_to_its_checkpoint_forgets_the_step_built_since():
    import mlx.core as mx

    from mlxd.models.batch_cache import BatchKVCache, BatchPositions
    cache = BatchKVCache(BatchPositions(), None, step=1)  # every write grows the storage: the refused one too
    cache.add_row((mx.ones((1, 2, 3, 4)), mx.ones((1, 2, 3, 4))))
    step = mx.full((1, 2, 1, 4), 7.0)
    cache.update_and_fetch(step, step)
    mx.eval(cache.state)
    before = [np.array(a) for a in cache.state]
    checkpoint = cache.checkpoint()
    cache.update_and_fetch(step * 2, step * 2)
    cache.restore(checkpoint)
    assert cache.end == 4 and all(np.array_equal(a, b) for a, b in zip(before, [np.array(a) for a in cache.state]))
    keys, _ = cache.update_and_fetch(step * 3, step * 3)  # the step built again writes the same column
    assert keys.shape[2] == 5 and float(keys[0, 0, 4, 0]) == 21.0 and float(keys[0, 0, 3, 0]) == 7.0


@pytest.mark.parametrize("enabled", [True, False])
def test_pipelined_checking_steps_write_the_caches_in_place(monkeypatch, enabled):
    """A pipelined checking step takes every layer's checkpoint before its build and drops it before the launch:
    a handle held at the launch would make each step's cache write copy the whole storage (MLX writes in place only
    an array nothing else holds), a copy of the KV cache a step on a GPU. With refusals about every other step (the
    checkpoint restored, the forward built again), the storage stays where it was from step to step, as a masked
    batch's does."""
    import mlx.core as mx

    def address(array: mx.array) -> int:
        return int(np.asarray(memoryview(array)).ctypes.data)  # evaluates it: the step queued last is computed

    monkeypatch.setattr(checked_greedy, "ENABLED", enabled)
    monkeypatch.setattr(checked_greedy, "PIPELINED", True)
    monkeypatch.setattr(checked_greedy, "EXPECTED_REFUSALS", 100.0)  # check every step, refused or not
    monkeypatch.setattr(checked_greedy, "PIPELINED_ROWS", 4)  # both rows together
    refusals = _counting_refusals(monkeypatch)
    requests = [GenerationRequest(f"g{i}", PROMPTS[i], GREEDY, max_tokens=30, ignore_eos=True,
                                  constraint=AllowedSets(_half_the_vocabulary(50 + i, 30))) for i in range(2)]
    scheduler = Scheduler(fake_runtime(), SchedulerOptions(prefill_chunk_size=32, max_batch_size=4))
    for request in requests:
        scheduler.add(request)
    steps: list[tuple[int, tuple]] = []  # where the first layer's keys are; their shape (rows, columns stored)
    while scheduler.has_work():
        scheduler.step()
        caches = scheduler._runner._caches
        if caches and caches[0].keys is not None:
            steps.append((address(caches[0].keys), caches[0].keys.shape))
    moved = [i for i in range(1, len(steps)) if steps[i][0] != steps[i - 1][0] and steps[i][1] == steps[i - 1][1]]
    assert len(steps) > 20 and not moved, (moved, steps)
    assert (sum(refusals) >= 5) == enabled, refusals


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
    """A checking step hands the grammars to the mask thread (tell, then fill) and asks them nothing until the
    masks are in: before the fix its argmax asked each row's grammar whether it goes on meanwhile, and a real
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
    monkeypatch.setattr(checked_greedy, "PIPELINED", True)
    requests = [GenerationRequest(f"r{i}", PROMPTS[i], GREEDY, max_tokens=10, ignore_eos=True, constraint=g)
                for i, g in enumerate(grammars)]
    run_arrivals(Scheduler(fake_runtime(), SchedulerOptions(prefill_chunk_size=4, pipelined=pipelined)),
                 {0: requests})
    assert [drain(r)[3].finish_reason for r in requests] == [FinishReason.STOP] * 2
