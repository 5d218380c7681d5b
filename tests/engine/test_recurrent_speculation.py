"""Speculative decoding of models with recurrent layers (Qwen3.5's Gated DeltaNet, Nemotron-H's Mamba-2): a verify
step keeps each recurrent layer's states after every position it fed and rolls each row back to its accepted ones,
so drafts leave the output exactly as plain decoding gives it: through the scheduler (n-gram drafts, a draft model),
with forced drafts all accepted or all rejected beside rows without any and of other depths, for seeded sampling
too; and the prefix-cache snapshot of a speculative answer holds the states after its accepted tokens only."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import numpy as np
import pytest

from mlxd.engine.request import GenerationRequest
from mlxd.engine.runner import Runner
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.generation.params import SamplingParams
from mlxd.loading.loader import load_model
from mlxd.models.recurrent_cache import BatchRecurrentCache
from tests.engine.test_speculative_scheduler import (
    PLAIN,
    SPECULATIVE,
    _assert_same,
    _count_verify_steps,
    _outputs,
    _prompt,
    _requests,
)
from tests.helpers.engine_runs import drain, run, run_arrivals
from tests.helpers.parity import PARITY, fixture_runtime

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module", params=["qwen3_5", "qwen3_5_moe", "nemotron_h"])
def runtime(request) -> ModelRuntime:
    return fixture_runtime(request.param)


def test_ngram_speculation_yields_the_plain_output(runtime):
    """Greedy, penalized and seeded rows joining at different steps: the same tokens, text and logprobs."""
    scheduler = Scheduler(runtime, SPECULATIVE)
    assert scheduler._runner.can_speculate and scheduler._speculator is not None
    assert any(isinstance(c, BatchRecurrentCache) for c in scheduler._runner._caches)
    arrivals = {0: slice(None, 2), 3: slice(2, 4), 6: slice(4, None)}
    plain, speculative = _requests(), _requests()
    run_arrivals(Scheduler(runtime, PLAIN), {step: plain[rows] for step, rows in arrivals.items()})
    steps = _count_verify_steps(scheduler)
    run_arrivals(scheduler, {step: speculative[rows] for step, rows in arrivals.items()})
    # The random fixtures rarely repeat themselves, so these drafts are few and mostly rejected: the forced drafts
    # below are accepted too, in steps where every row drafts differently.
    assert steps, "no step verified drafts"
    _assert_same(_outputs(speculative), _outputs(plain))


def test_a_draft_models_drafts_leave_the_output_unchanged(runtime):
    """A recurrent target with a draft model of key/value layers only (the draft itself may not be recurrent)."""
    drafting = dataclasses.replace(runtime, draft_model=load_model(PARITY / "qwen3", dtype="float32").model)
    options = SchedulerOptions(prefill_chunk_size=8, max_batch_size=8, speculate_depth=3, speculate_adaptive=False)
    plain, speculative = _requests(), _requests()
    run(Scheduler(runtime, PLAIN), *plain)
    run(Scheduler(drafting, options), *speculative)
    got = _outputs(speculative)
    assert sum(g[3].drafted_tokens for g in got) > 0
    _assert_same(got, _outputs(plain))


def _open(runner: Runner, row: int, prompt: list[int], sampling: SamplingParams = GREEDY) -> None:
    runner.open(row, sampling, prompt, None)
    if len(prompt) > 1:
        runner.prefill(row, prompt[:-1])
    runner.join(row, prompt[-1])


def _alone(runtime: ModelRuntime, prompt: list[int], n: int, sampling: SamplingParams = GREEDY) -> list[int]:
    runner = Runner(runtime.model, runtime.vocab_size)
    _open(runner, 0, prompt, sampling)
    tokens: list[int] = []
    while len(tokens) < n:
        tokens += [t for result in runner.step() for t in result.tokens]
    return tokens[:n]


def test_drafts_all_accepted_all_rejected_and_none_share_verify_steps(runtime):
    """Each step gives each row another kind of draft: the greedy continuation (k = 1..4, all accepted), a wrong
    first token (all rejected), or none; plain steps come between. Every row's tokens are its plain ones, so every
    row's states after each verify step are those after its accepted tokens, whatever the other rows fed. The first
    row's prompt is one token: it joins with nothing seen, and the batch holds no states until the first step."""
    rows, n = 4, 24
    prompts = [[17]] + [_prompt(7 + 3 * row, 40 + row) for row in range(1, rows)]
    truth = [_alone(runtime, p, n + 8) for p in prompts]
    runner = Runner(runtime.model, runtime.vocab_size)
    for row, prompt in enumerate(prompts):
        _open(runner, row, prompt)
    got: list[list[int]] = [[] for _ in range(rows)]
    kinds = {"all": 0, "rejected": 0}
    for step in range(40):
        if step % 4 == 3:
            results = runner.step()
        else:
            drafts, expected = {}, {}
            for row in range(rows):
                kind, done = (row + step) % 3, len(got[row])
                if done >= n:
                    continue
                if kind == 0:  # the continuation: every draft accepted, one more token after them
                    depth = 1 + (row + step) % 4
                    drafts[row], expected[row] = truth[row][done:done + depth], depth + 1
                    kinds["all"] += 1
                elif kind == 1:  # a wrong first draft: none accepted, the plain token
                    wrong = 3 + (truth[row][done] - 2) % 314  # != truth[row][done]
                    drafts[row], expected[row] = [wrong, *truth[row][done + 1:done + 3]], 1
                    kinds["rejected"] += 1
            results = runner.step(drafts)  # nothing queued: each step is read below
            for result in results:
                if result.row in expected:
                    assert len(result.tokens) == expected[result.row], f"step {step}, row {result.row}"
        for result in results:
            got[result.row] += result.tokens
        results = runner.flush()
        for result in results:
            got[result.row] += result.tokens
        if min(len(g) for g in got) >= n:
            break
    assert kinds["all"] > 8 and kinds["rejected"] > 8
    for row in range(rows):
        assert got[row][:n] == truth[row][:n], f"row {row}"


def test_seeded_rows_draw_the_same_tokens_with_and_without_drafts(runtime):
    """Seeded sampling: a verify step's tokens are those plain steps draw, and drafts change nothing after it."""
    prompt = _prompt(9, 5)
    for seed in range(12):
        sampling = SamplingParams(temperature=0.8, top_k=40, seed=seed)
        plain = _alone(runtime, prompt, 10, sampling)
        runner = Runner(runtime.model, runtime.vocab_size)
        _open(runner, 0, prompt, sampling)
        tokens: list[int] = []
        while len(tokens) < 10:
            # Drafts: the plain run's next two tokens and a likely wrong one (accepted as often as sampled).
            drafts = {0: plain[len(tokens):len(tokens) + 2] + [7]} if len(tokens) % 2 == 0 else None
            tokens += [t for result in runner.step(drafts) + runner.flush() for t in result.tokens]
        assert tokens[:10] == plain, f"seed {seed}"


class _ForcingRunner(Runner):
    """Replaces the n-gram drafts of its one row by as many tokens of `truth` (its greedy answer), the last of
    two or more made wrong: each verify step accepts some drafts and rejects one."""

    def __init__(self, runtime: ModelRuntime, truth: list[int]) -> None:
        super().__init__(runtime.model, runtime.vocab_size)
        self.truth, self.seen = truth, 0

    def step(self, drafts=None):
        if drafts:
            drafts = {row: self._forced(len(d)) for row, d in drafts.items()}
        return self._count(super().step(drafts))

    def flush(self):
        return self._count(super().flush())

    def _forced(self, depth: int) -> list[int]:
        run = self.truth[self.seen:self.seen + depth]
        if len(run) > 1:
            run[-1] = 3 + (run[-1] - 2) % 314
        return run

    def _count(self, results):
        self.seen += sum(len(result.tokens) for result in results)
        return results


def test_an_answers_snapshot_holds_the_states_after_its_accepted_tokens(runtime):
    """A speculative answer whose verify steps rejected drafts leaves the batch; its snapshot serves the chat's
    next turn (prompt + answer + more), which then yields the tokens a cold start yields."""
    prompt = _prompt(20, 60)
    cold = GenerationRequest("cold", prompt, GREEDY, max_tokens=28, ignore_eos=True)
    run(Scheduler(runtime, SchedulerOptions(prefill_chunk_size=32)), cold)
    truth = drain(cold)[0]
    options = dataclasses.replace(SPECULATIVE, prefill_chunk_size=32, prefix_cache_bytes=64 << 20)
    scheduler = Scheduler(runtime, options, _ForcingRunner(runtime, truth))
    first = GenerationRequest("first", prompt, GREEDY, max_tokens=20, ignore_eos=True)
    run(scheduler, first)
    answer, _, _, final = drain(first)
    assert answer == truth[:20]
    assert 0 < final.accepted_draft_tokens < final.drafted_tokens, "no verify step both accepted and rejected"
    turn = prompt + answer + _prompt(8, 99)
    warm = GenerationRequest("warm", turn, GREEDY, max_tokens=12, ignore_eos=True)
    run(scheduler, warm)
    tokens, _, _, final = drain(warm)
    # The answer's last token never ran through the model (the row left once it was sampled).
    assert final.cached_tokens == len(prompt) + len(answer) - 1
    again = GenerationRequest("again", turn, GREEDY, max_tokens=12, ignore_eos=True)
    run(Scheduler(runtime, SchedulerOptions(prefill_chunk_size=32)), again)
    assert tokens == drain(again)[0]


def test_the_kv_budget_counts_a_verify_steps_states(runtime):
    """With drafts of up to 4 tokens a row may hold its recurrent states 6 times over (before a verify step and
    after each of its 5 positions); the attention layers' bytes per position are as without speculation."""
    plain, speculative = Scheduler(runtime, PLAIN).budget.layout, Scheduler(runtime, SPECULATIVE).budget.layout
    assert plain.row_bytes > 0 and speculative.row_bytes == 6 * plain.row_bytes
    assert speculative.layers == plain.layers


def test_a_verify_steps_states_are_dropped_by_its_rollback(runtime):
    """Only a verify step holds the states of each position, until its rollback; plain steps hold none."""
    runner = Runner(runtime.model, runtime.vocab_size)
    _open(runner, 0, _prompt(9, 7))
    recurrent = [c for c in runner._caches if isinstance(c, BatchRecurrentCache)]
    runner.step({0: [5, 6, 7]})
    runner.step()
    assert all(c._steps is None for c in recurrent)
    assert all(c.recurrent_state is not None and c.recurrent_state.ndim == 4 for c in recurrent)
    mx.eval([a for c in recurrent for a in c.state])
    assert np.isfinite(np.array(recurrent[0].recurrent_state)).all()
