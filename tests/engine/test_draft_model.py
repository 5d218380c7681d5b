"""Speculative decoding with a draft model (engine/draft_model.py) through the real scheduler: the output is the
plain output whatever the draft (the target itself, full acceptance for greedy rows; another model of the same
vocabulary, little), batched with rows joining and leaving, greedy and seeded."""

from __future__ import annotations

import dataclasses

import pytest

from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.loading.loader import load_model
from tests.engine.test_speculative_scheduler import PLAIN, _assert_same, _outputs, _requests
from tests.helpers.engine_runs import run_arrivals
from tests.helpers.parity import PARITY, fixture_runtime

DRAFTING = SchedulerOptions(prefill_chunk_size=8, max_batch_size=8, speculate_depth=3, speculate_adaptive=False)


@pytest.fixture(scope="module", params=["llama", "gemma3_text"])
def runtime(request):
    return fixture_runtime(request.param)


@pytest.mark.parametrize("draft", ["itself", "qwen3", "itself, catching up 3 tokens a pass"])
def test_a_draft_models_drafts_leave_the_output_unchanged(runtime, draft, monkeypatch):
    if "catching up" in draft:  # prompts longer than a catch-up pass are taken in over several
        monkeypatch.setattr("mlxd.engine.draft_model._CATCH_UP", 3)
    model = runtime.model if draft.startswith("itself") else load_model(PARITY / draft, dtype="float32").model
    drafting = dataclasses.replace(runtime, draft_model=model)
    arrivals = {0: slice(None, 2), 3: slice(2, 4), 6: slice(4, None)}
    plain, speculative = _requests(), _requests()
    run_arrivals(Scheduler(runtime, PLAIN), {step: plain[rows] for step, rows in arrivals.items()})
    run_arrivals(Scheduler(drafting, DRAFTING), {step: speculative[rows] for step, rows in arrivals.items()})
    got = _outputs(speculative)
    _assert_same(got, _outputs(plain))
    drafted = sum(g[3].drafted_tokens for g in got)
    accepted = sum(g[3].accepted_draft_tokens for g in got)
    assert drafted > 0
    if draft.startswith("itself"):  # greedy rows accept every draft (the sampled ones about as often as they agree)
        greedy = [g for i, g in enumerate(got) if i % 4 == 0]  # plainly greedy (no penalty, as the draft)
        assert sum(g[3].accepted_draft_tokens for g in greedy) == sum(g[3].drafted_tokens for g in greedy) > 0
    else:
        assert accepted < drafted


def test_requests_with_speculation_off_share_a_draft_models_adaptive_batch(runtime):
    """Rows whose requests turned speculation off ride along in the draft model's adaptive batch, its probes
    included, and every output is the plain one."""
    plain = _requests()
    run_arrivals(Scheduler(runtime, PLAIN), {0: plain})
    mixed = [dataclasses.replace(r, speculation=0 if i % 2 else None) for i, r in enumerate(_requests())]
    drafting = dataclasses.replace(runtime, draft_model=runtime.model)
    adaptive = dataclasses.replace(DRAFTING, speculate_adaptive=True)
    run_arrivals(Scheduler(drafting, adaptive), {0: mixed})
    _assert_same(_outputs(mixed), _outputs(plain))


def test_a_draft_model_of_another_vocabulary_is_refused(tmp_path):
    import json
    import shutil

    from mlxd.errors import ModelLoadError
    from mlxd.loading.model_source import load_draft_model, load_model_tokenizer

    folder = shutil.copytree(PARITY / "qwen3", tmp_path / "draft")
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    first = next(iter(vocab))
    vocab["renamed"] = vocab.pop(first)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ModelLoadError, match="another vocabulary"):
        load_draft_model(folder, "float32", load_model_tokenizer(PARITY / "llama"))
    assert load_draft_model(PARITY / "qwen3", "float32", load_model_tokenizer(PARITY / "llama")) is not None


def test_rows_join_and_leave_a_draft_models_caches_only_when_it_drafts(runtime):
    """A draft model whose drafts are rejected drafts seldom (probes); requests still start and end. Their rows join
    and leave its caches at its next drafting step, not one by one: each start and end copied every cache array
    (and, left lazy, grew a chain of 600 graph nodes over 200 requests)."""
    from mlxd.engine.draft_model import DraftModel
    draft = DraftModel(runtime.model)
    for row in (0, 1, 2):
        draft.start(row, [5, 6, 7, 8])
    assert set(draft.draft(dict.fromkeys((0, 1, 2), 1))) == {0, 1, 2}  # a probe: the caches hold the three rows
    arrays = [a for cache in draft._caches for a in cache.state]
    for new in range(3, 103):
        draft.start(new, [5, 6, 7])
        draft.forget(new)
    draft.forget(0)
    draft.forget(1)
    draft.start(103, [5, 6])
    assert all(a is b for a, b in zip(arrays, [a for cache in draft._caches for a in cache.state], strict=True))
    draft.forget(2)  # no row in the caches stays: they are emptied at once, their memory freed
    assert [a for cache in draft._caches for a in cache.state] == []
    draft.start(104, [5, 6, 7, 8])
    drafts = draft.draft({103: 2, 104: 1})
    assert {row: len(d) for row, d in drafts.items()} == {103: 2, 104: 1}
    assert draft._order == [103, 104]


def test_a_long_catch_up_runs_and_is_timed_apart_from_the_drafting(runtime):
    """More than a few pending tokens a row (a first drafting step's prompt, a probe's plain-step tokens) are taken
    in by passes of their own, timed as `caught_up` (the policy leaves them out of a verify step's cost); the token
    or two a verify step leaves go with the drafting pass, and nothing is counted. The drafts are what the model
    itself would generate greedily either way."""
    from mlxd.engine.draft_model import DraftModel
    prompt = [1 + i % 40 for i in range(30)]
    model = runtime.model
    draft = DraftModel(model)
    draft.start(0, prompt)
    first = draft.draft({0: 3})[0]
    assert draft.caught_up > 0
    draft.observe(0, first, first + [7])   # every draft accepted, then one more token: one pending
    again = draft.draft({0: 2})[0]
    assert draft.caught_up == 0.0
    whole = DraftModel(model)  # the same history taken in at once, for the drafts it gives
    whole.start(0, prompt + first + [7])
    assert whole.draft({0: 2})[0] == again
