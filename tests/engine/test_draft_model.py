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


def _pending_nodes(array) -> int:
    """The operations not yet evaluated behind `array` (an evaluated array is one node)."""
    import tempfile
    from pathlib import Path

    import mlx.core as mx
    with tempfile.TemporaryDirectory() as folder:
        dot = Path(folder, "graph.dot")
        mx.export_to_dot(str(dot), array)
        return dot.read_text().count("label =")


def test_rows_joining_and_leaving_a_draft_model_that_does_not_draft_leave_no_growing_graph(runtime):
    """A draft model whose drafts are rejected drafts for no row, for as long as that lasts; requests still start
    and end. Their bookkeeping in its caches is evaluated as it comes, not piled into one lazy chain."""
    from mlxd.engine.draft_model import DraftModel
    draft = DraftModel(runtime.model)
    rows = [0, 1, 2]
    for row in rows:
        draft.start(row, [5, 6, 7, 8])
    draft.draft(dict.fromkeys(rows, 1))  # a probe: the caches hold keys from here on
    for new in range(3, 103):
        draft.forget(rows.pop(0))
        rows.append(new)
        draft.start(new, [5, 6, 7])
    assert max(_pending_nodes(a) for cache in draft._caches for a in cache.state) <= 3  # 501 labels before the fix
