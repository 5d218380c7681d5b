"""Token constraints in the decode batch (engine/constraint.py) on a fake model, with a fake constraint: rows
draw only allowed tokens whatever their sampling, a complete constraint ends the row with STOP, the mask removes
only what was not chosen, and constrained rows change nothing for the rows beside them."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from mlxd.constraints import ConstraintError
from mlxd.engine.request import FinishReason, GenerationRequest
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.errors import InternalError, ResourceExhausted
from mlxd.generation.params import SamplingParams
from tests.helpers.engine_runs import drain, run, run_arrivals
from tests.helpers.fakes import VOCAB, fake_runtime

GREEDY = SamplingParams(temperature=0.0)
PROMPTS = [[3, 9, 4], [7] * 20, [5, 6], [11, 12, 13, 14, 15, 16, 17, 18, 19]]


class AllowedSets:
    """Step i allows the tokens in steps[i]; complete after the last. Records what it was told."""

    def __init__(self, steps: list[set[int]], mask_words: int = (VOCAB + 31) // 32) -> None:
        self.steps, self.told, self.mask_words = steps, [], mask_words

    def fill_bitmask(self, out: np.ndarray) -> None:
        assert out.shape == (self.mask_words,) and out.flags["C_CONTIGUOUS"], out.shape
        out[:] = 0
        for token in self.steps[len(self.told)]:
            out[token // 32] |= np.int32(np.uint32(1 << (token % 32)).view(np.int32))

    def consume(self, token: int) -> None:
        assert token in self.steps[len(self.told)], (token, len(self.told))
        self.told.append(token)

    def is_stopped(self) -> bool:
        return len(self.told) == len(self.steps)

    def rollback(self, tokens: int) -> None:
        assert 0 <= tokens <= len(self.told)
        del self.told[len(self.told) - tokens:]


def _request(name, prompt, n=12, constraint=None, **kwargs) -> GenerationRequest:
    return GenerationRequest(name, prompt, kwargs.pop("sampling", GREEDY), max_tokens=n, ignore_eos=True,
                             constraint=constraint, **kwargs)


def _alone(runtime, request: GenerationRequest, pipelined: bool = True):
    run(Scheduler(runtime, SchedulerOptions(prefill_chunk_size=4, pipelined=pipelined)), request)
    return drain(request)


def test_a_constraint_the_greedy_output_meets_changes_nothing_and_ends_it():
    runtime = fake_runtime()
    free = _alone(runtime, _request("free", PROMPTS[0], n=12))[0]
    steps = [{token, (token + 5) % VOCAB} for token in free[:6]]
    ids, _, _, final = _alone(runtime, _request("c", PROMPTS[0], n=12, constraint=AllowedSets(steps)))
    assert ids == free[:6]
    assert final.finish_reason is FinishReason.STOP  # complete after 6 tokens, with max_tokens 12


def test_a_constraint_wider_than_the_logits_fills_its_own_width():
    # A tokenizer with more ids than the model's logits: its mask rows are wider, and only the logits' bits count.
    runtime = fake_runtime()
    steps = [{3, 4}, {5}, {6, 7}]
    wide = _alone(runtime, _request("wide", PROMPTS[0], n=8, constraint=AllowedSets(steps, mask_words=5)))
    narrow = _alone(runtime, _request("narrow", PROMPTS[0], n=8, constraint=AllowedSets(steps)))
    assert wide[0] == narrow[0] and len(wide[0]) == 3 and all(t in a for t, a in zip(wide[0], steps))


@pytest.mark.parametrize("sampling", [GREEDY, SamplingParams(temperature=1.0, seed=5),
                                      SamplingParams(temperature=0.8, top_k=3, repetition_penalty=1.5, seed=1),
                                      SamplingParams(temperature=0.0, logit_bias={1: 50.0})])
def test_rows_draw_only_allowed_tokens_and_seeded_ones_repeat(sampling):
    runtime = fake_runtime()
    free = _alone(runtime, _request("free", PROMPTS[1], n=8, sampling=sampling))[0]
    steps = [{(t + 1) % VOCAB, (t + 2) % VOCAB, (t + 3) % VOCAB} for t in free]  # never the free choice
    runs = [_alone(runtime, _request(f"c{i}", PROMPTS[1], n=8, sampling=sampling, constraint=AllowedSets(steps)))
            for i in range(2)]
    ids = runs[0][0]
    assert len(ids) == 8 and all(token in allowed for token, allowed in zip(ids, steps))
    if sampling.temperature == 0 or sampling.seed is not None:
        assert runs[1][0] == ids


def test_logprobs_are_of_the_constrained_distribution():
    runtime = fake_runtime()
    steps = [set(range(10, 14))] * 5
    request = _request("c", PROMPTS[2], n=5, constraint=AllowedSets(steps), logprobs=True, top_logprobs=6,
                       sampling=SamplingParams(temperature=1.0, seed=2))
    run(Scheduler(runtime, SchedulerOptions(prefill_chunk_size=4)), request)
    tokens = []
    while not (event := request.events.get_nowait()).__class__.__name__ == "FinalEvent":
        for lp in event.logprobs:
            tokens.append(lp)
    assert len(tokens) == 5
    for lp in tokens:
        # 6 asked for, 4 allowed: the disallowed tokens have no logprob, so they are not listed (not even at -inf)
        assert {t.token_id for t in lp.top} == steps[0] and all(math.isfinite(t.logprob) for t in lp.top)
        assert math.isclose(sum(math.exp(t.logprob) for t in lp.top), 1.0, rel_tol=1e-4)


@pytest.mark.parametrize("speculate", ["", "ngram"])
def test_constrained_rows_beside_free_ones_change_nothing_for_either(speculate):
    """Also where rows draft (n-gram, every step): constrained rows draft too, their drafts cut where the
    constraint refuses them and each verified position masked, so their tokens, masks and logprobs stay those of a
    plain step."""
    runtime = fake_runtime()

    def requests():
        out = []
        for i, prompt in enumerate(PROMPTS):
            constraint = AllowedSets([{(7 * i + s) % VOCAB, (7 * i + s + 1) % VOCAB} for s in range(9)]) \
                if i % 2 else None
            out.append(_request(f"r{i}", prompt, n=9, constraint=constraint, logprobs=True,
                                sampling=SamplingParams(temperature=0.7, seed=i) if i == 3 else GREEDY))
        return out

    alone = [_alone(runtime, r)[:3] for r in requests()]
    batched = requests()
    options = SchedulerOptions(prefill_chunk_size=4, max_batch_size=8, speculate=speculate, speculate_adaptive=False)
    run_arrivals(Scheduler(runtime, options), {0: batched[:2], 3: batched[2:]})
    got = [drain(r) for r in batched]
    assert [g[:2] for g in got] == [a[:2] for a in alone]
    for g, a in zip(got, alone):
        assert g[2] == pytest.approx(a[2], abs=1e-5)
    if speculate:
        assert any(g[3].drafted_tokens for g in got[0::2]) and any(g[3].drafted_tokens for g in got[1::2])


class FailsAt(AllowedSets):
    """AllowedSets whose mask fill (or its being told a token) raises at step `at`: a grammar past its limits."""

    def __init__(self, steps: list[set[int]], at: int, where: str) -> None:
        super().__init__(steps)
        self.at, self.where = at, where

    def fill_bitmask(self, out: np.ndarray) -> None:
        if self.where == "fill" and len(self.told) == self.at:
            raise ConstraintError("too_large", "the grammar ran out of fuel")
        super().fill_bitmask(out)

    def consume(self, token: int) -> None:
        if self.where == "consume" and len(self.told) == self.at:
            raise ConstraintError("rejected", "token refused")
        super().consume(token)


@pytest.mark.parametrize("where,error", [("fill", ResourceExhausted), ("consume", InternalError)])
def test_a_failing_constraint_ends_its_row_only(where, error):
    runtime = fake_runtime()
    steps = [set(range(1, 40))] * 8
    free = _request("free", PROMPTS[0], n=8)
    failing = _request("failing", PROMPTS[1], n=8, constraint=FailsAt(steps, 3, where))
    alone = _alone(runtime, _request("alone", PROMPTS[0], n=8))[0]
    run_arrivals(Scheduler(runtime, SchedulerOptions(prefill_chunk_size=4, max_batch_size=4)), {0: [free, failing]})
    assert drain(free)[0] == alone
    with pytest.raises(error, match="constraint: "):
        drain(failing)


def test_draft_masks_follow_the_drafts_the_constraint_allows_and_leave_it_as_it_was():
    from mlxd.engine.masks import draft_masks

    def allowed(row):
        return {t for t in range(VOCAB) if row[t // 32] >> (t % 32) & 1}

    def alone(constraint, drafts):
        drafted = draft_masks([constraint], [drafts], VOCAB)
        if drafted.failures:
            raise drafted.failures[0]
        return drafted.masks[0, :1 + len(drafted.drafts[0])], drafted.drafts[0]

    steps = [{1, 2}, {3}, {4, 5}, {6}]
    constraint = AllowedSets(steps)
    masks, kept = alone(constraint, [2, 3, 9, 6])            # 9 is refused at position 2: cut there
    assert kept == [2, 3] and [allowed(m) for m in masks] == [{1, 2}, {3}, {4, 5}]
    assert constraint.told == []                               # rolled back
    masks, kept = alone(constraint, [1, 3, 4, 6, 7])           # complete after 6: what follows is free
    assert kept == [1, 3, 4, 6] and len(masks) == 5 and allowed(masks[4]) == set(range(VOCAB))
    failing = FailsAt(steps, 2, "fill")                        # its mask after two drafts fails: cut before
    masks, kept = alone(failing, [1, 3, 4])
    assert kept == [1] and len(masks) == 2 and failing.told == []
    refusing = FailsAt(steps, 1, "consume")                    # the second draft cannot be consumed: cut before
    masks, kept = alone(refusing, [1, 3, 4])
    assert kept == [1] and len(masks) == 2 and refusing.told == []
    with pytest.raises(ConstraintError):                       # its own mask fails: the row's failure
        alone(FailsAt(steps, 0, "fill"), [1])


def test_draft_masks_of_a_batch_equal_each_row_alone():
    """Rows are filled position by position together; each row's masks and cut equal those it gets alone, free
    rows keep their drafts and all-allowed masks, and a row whose own mask fails does not stop the others."""
    from mlxd.engine.masks import draft_masks

    steps = [{1, 2}, {3}, {4, 5}, {6}]
    batch = [([2, 3, 9, 6], lambda: AllowedSets(steps)), ([5, 5, 5], None),
             ([1, 3, 4, 6, 7], lambda: AllowedSets(steps)), ([1, 3, 4], lambda: FailsAt(steps, 2, "fill")),
             ([2], lambda: FailsAt(steps, 0, "fill")), ([], lambda: AllowedSets(steps)),
             ([1, 3, 4], lambda: AllowedSets([{1}, set(), {4}]))]
    together = draft_masks([make() if make else None for _, make in batch], [d for d, _ in batch], VOCAB)
    assert together.masks.shape == (len(batch), 6, (VOCAB + 31) // 32)
    assert set(together.failures) == {4} and isinstance(together.failures[4], ConstraintError)
    for i, (drafts, make) in enumerate(batch):
        alone = draft_masks([make() if make else None], [drafts], VOCAB)
        assert together.drafts[i] == alone.drafts[0], i
        assert (together.masks[i, :alone.masks.shape[1]] == alone.masks[0]).all(), i
        assert (together.masks[i, alone.masks.shape[1]:] == -1).all(), i
    assert together.drafts[1] == [5, 5, 5] and (together.masks[1] == -1).all()
    assert together.drafts[6] == [] and (together.masks[6, 1:] == -1).all()  # nothing allowed after 1: cut before


class SlowOneAtATime(AllowedSets):
    """AllowedSets whose mask takes a while to fill and that counts any use while another is under way (another
    thread's): the runner fills a step's masks on its own thread and queues their sampling on the next call."""

    def __init__(self, steps: list[set[int]]) -> None:
        super().__init__(steps)
        self._busy = threading.Lock()
        self.overlaps = 0

    def _alone(self, work):
        if not self._busy.acquire(blocking=False):
            self.overlaps += 1
            self._busy.acquire()
        try:
            return work()
        finally:
            self._busy.release()

    def fill_bitmask(self, out: np.ndarray) -> None:
        def fill():
            time.sleep(0.003)  # the caller goes on meanwhile: rows finish, join and leave between steps
            super(SlowOneAtATime, self).fill_bitmask(out)
        self._alone(fill)

    def consume(self, token: int) -> None:
        self._alone(lambda: super(SlowOneAtATime, self).consume(token))

    def is_stopped(self) -> bool:
        return self._alone(lambda: super(SlowOneAtATime, self).is_stopped())


def test_masks_filled_while_rows_finish_join_and_leave_give_what_quick_ones_do():
    """Rows of different lengths, one whose constraint completes early, arriving over several steps: with masks
    slow to fill (the next call queues the step's sampling), each row's tokens are those of quick masks, and no
    constraint is ever used by two threads at once."""
    runtime = fake_runtime()

    def requests(kind):
        out = []
        for i, prompt in enumerate(PROMPTS):
            steps = [{(5 * i + s) % VOCAB, (5 * i + s + 2) % VOCAB} for s in range(4 if i == 1 else 10)]
            out.append(_request(f"r{i}", prompt, n=3 + 2 * i, constraint=kind(steps)))
        out.append(_request("free", PROMPTS[0], n=10))
        return out

    def outputs(kind):
        made = requests(kind)
        run_arrivals(Scheduler(runtime, SchedulerOptions(prefill_chunk_size=4, max_batch_size=8)),
                     {0: made[:2], 2: made[2:4], 5: made[4:]})
        return [drain(r)[0] for r in made], [r.constraint for r in made[:4]]

    quick, _ = outputs(AllowedSets)
    slow, constraints = outputs(SlowOneAtATime)
    assert slow == quick and all(quick)
    assert [c.overlaps for c in constraints] == [0] * 4


def test_a_constrained_batch_reads_its_steps_on_the_mask_thread(monkeypatch):
    """The worker launches a constrained step's forward without waiting for the step before: the mask thread reads
    it (then tells the constraints and fills the masks). Only the first step after a free one is read by the
    worker, whose launch would walk the same tokens. (A greedy row's steps mask here, not check: checked_greedy.)"""
    from mlxd.engine import checked_greedy
    from mlxd.engine.queued_step import QueuedStep

    monkeypatch.setattr(checked_greedy, "ENABLED", False)

    readers: list[str] = []
    read = QueuedStep.read

    def spy(self):
        readers.append(threading.current_thread().name)
        return read(self)

    monkeypatch.setattr(QueuedStep, "read", spy)
    runtime = fake_runtime()
    free = _alone(runtime, _request("free", PROMPTS[0], n=12))[0]
    readers.clear()
    steps = [set(range(VOCAB))] * 10
    ids = _alone(runtime, _request("c", PROMPTS[0], n=12, constraint=AllowedSets(steps)))[0]
    assert ids == free[:10]
    on_mask_thread = [name for name in readers if name.startswith("mlxd-masks")]
    assert len(on_mask_thread) >= 8, readers


@pytest.mark.parametrize("beside_free", [False, True])
def test_a_constrained_steps_masks_are_put_on_the_device_by_the_mask_thread(monkeypatch, beside_free):
    """The worker only selects by a step's masks: their upload (host work, ~0.17 ms a 16-row step of a 128k
    vocabulary on an H100) is the mask thread's, done while the worker launches. The same tokens either way, with
    every row constrained or some beside a free one."""
    from mlxd.engine import checked_greedy
    from mlxd.models import ops

    monkeypatch.setattr(checked_greedy, "ENABLED", False)
    uploaders: list[str] = []
    upload = ops.upload_masks

    def spy(*args):
        uploaders.append(threading.current_thread().name)
        return upload(*args)

    monkeypatch.setattr(ops, "upload_masks", spy)
    runtime = fake_runtime()
    steps = [{(3 * s) % VOCAB, (3 * s + 1) % VOCAB} for s in range(10)]
    made = [_request("c", PROMPTS[0], n=10, constraint=AllowedSets(steps))]
    if beside_free:
        made.append(_request("free", PROMPTS[1], n=10))
    run(Scheduler(runtime, SchedulerOptions(prefill_chunk_size=4, max_batch_size=4)), *made)
    ids = drain(made[0])[0]
    assert all(token in allowed for token, allowed in zip(ids, steps)) and len(ids) == 10
    assert len(uploaders) >= 8 and all(name.startswith("mlxd-masks") for name in uploaders), uploaders


def test_a_checking_steps_masks_stay_on_the_host(monkeypatch):
    """A greedy row checked (unpipelined: engine/checked_greedy.py) reads its masks on the host: nothing is uploaded
    for it."""
    from mlxd.engine import checked_greedy
    from mlxd.models import ops

    monkeypatch.setattr(checked_greedy, "ENABLED", True)
    uploads: list[tuple] = []
    upload = ops.upload_masks
    monkeypatch.setattr(ops, "upload_masks", lambda *args: uploads.append(args) or upload(*args))
    runtime = fake_runtime()
    free = _alone(runtime, _request("free", PROMPTS[0], n=10))[0]
    checked = _alone(runtime, _request("c", PROMPTS[0], n=10, constraint=AllowedSets([set(range(VOCAB))] * 10)),
                     pipelined=False)[0]
    assert checked == free and uploads == []
