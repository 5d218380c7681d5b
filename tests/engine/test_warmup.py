"""The warm-up before SERVING (engine/warmup.py) runs every width of verify step speculation may pick, and on a GPU
every batch size, plain and speculative."""

from __future__ import annotations

import dataclasses

import pytest

from mlxd.engine.runner import Runner
from mlxd.engine.warmup import warm_up
from mlxd.loading.loader import load_model
from tests.helpers.parity import PARITY, fixture_runtime


@pytest.fixture(scope="module")
def runtime():
    return fixture_runtime("llama")


@pytest.mark.parametrize("drafting", ["ngram", "draft model", "off"])
def test_warm_up_runs_each_verify_width(runtime, drafting, monkeypatch):
    widths: list[int] = []
    verify = Runner._verify

    def spy(self, drafts):
        widths.append(1 + max(len(d) for d in drafts.values()))
        return verify(self, drafts)

    monkeypatch.setattr(Runner, "_verify", spy)
    if drafting == "draft model":
        runtime = dataclasses.replace(runtime, draft_model=load_model(PARITY / "qwen3", dtype="float32").model)
    warm_up(runtime, speculate="ngram" if drafting == "ngram" else "", speculate_depth=4)
    assert sorted(set(widths)) == ([] if drafting == "off" else [2, 3, 4, 5])


def test_warm_up_runs_the_draft_models_catch_up_at_every_width(runtime, monkeypatch):
    from mlxd.engine import draft_model

    widths: list[int] = []
    bucket = draft_model._bucket

    def spy(length):
        widths.append(bucket(length))
        return widths[-1]

    monkeypatch.setattr(draft_model, "_bucket", spy)
    runtime = dataclasses.replace(runtime, draft_model=load_model(PARITY / "qwen3", dtype="float32").model)
    warm_up(runtime, speculate_depth=4)
    assert {1 << i for i in range(10)} <= set(widths)


def test_the_batch_warm_up_decodes_every_batch_size(runtime, monkeypatch):
    """warm_up_batch steps the batch at each size from 1 to the maximum (on a GPU, each new size may compile)."""
    from mlxd.engine.warmup import warm_up_batch

    sizes: list[int] = []
    forward = Runner._forward_step

    def spy(self, inputs):
        sizes.append(int(inputs.size))
        return forward(self, inputs)

    monkeypatch.setattr(Runner, "_forward_step", spy)
    warm_up_batch(runtime, [1, 2, 3, 4, 5, 6, 7, 8], rows=6)
    assert set(range(1, 7)) <= set(sizes) and max(sizes) == 6


@pytest.mark.parametrize("drafting", ["ngram", "draft model"])
def test_the_batch_warm_up_verifies_and_drafts_at_every_batch_size(runtime, drafting, monkeypatch):
    """With speculation, warm_up_batch also runs verify steps (and a draft model's passes, over rows of different
    lengths) at each batch size from 1 to the maximum: the one-row warm-ups do not meet a batch's kernels."""
    from mlxd.engine.draft_model import DraftModel
    from mlxd.engine.warmup import warm_up_batch

    verified: list[int] = []
    drafted: list[int] = []
    verify, draft = Runner._verify, DraftModel.draft

    def spy_verify(self, drafts):
        verified.append(len(self._order) + len(self._joining))
        return verify(self, drafts)

    def spy_draft(self, depths):
        out = draft(self, depths)
        drafted.append(len(out))
        return out

    monkeypatch.setattr(Runner, "_verify", spy_verify)
    monkeypatch.setattr(DraftModel, "draft", spy_draft)
    if drafting == "draft model":
        runtime = dataclasses.replace(runtime, draft_model=load_model(PARITY / "qwen3", dtype="float32").model)
    warm_up_batch(runtime, [1, 2, 3, 4, 5, 6, 7, 8], rows=5, speculate="ngram" if drafting == "ngram" else "",
                  speculate_depth=3)
    assert set(range(1, 6)) <= set(verified) and max(verified) == 5
    if drafting == "draft model":
        assert set(range(1, 6)) <= set(drafted)


def test_the_batch_and_prefill_warm_ups_run_only_on_a_gpu(runtime, monkeypatch):
    from mlxd.engine import warmup

    calls: list[int] = []
    monkeypatch.setattr(warmup, "warm_up_batch", lambda runtime, ids, rows, *_: calls.append(rows))
    monkeypatch.setattr(warmup, "warm_up_prefill_widths", lambda runtime: calls.append(0))
    warm_up(runtime, batch_rows=16)
    assert calls == []  # the tests run on the CPU, where nothing compiles


def test_the_prefill_warm_up_runs_a_chunk_of_each_tile_width(runtime, monkeypatch):
    from mlxd.engine.warmup import TILE_ROWS, warm_up_prefill_widths

    chunks: list[int] = []
    prefill = Runner.prefill

    def spy(self, row, ids, images=()):
        chunks.append(len(ids))
        return prefill(self, row, ids, images)

    monkeypatch.setattr(Runner, "prefill", spy)
    warm_up_prefill_widths(runtime)
    assert sorted(chunks) == sorted(TILE_ROWS)


@pytest.mark.parametrize("drafting", ["ngram", "off"])
def test_the_sampling_warm_up_runs_every_filter_logprobs_and_the_masks(runtime, drafting, monkeypatch):
    """warm_up_sampling (GPU only in warm_up) meets what the greedy warm-ups do not: each sampling filter, logprobs,
    a constrained step's masks and, with speculation, verify steps that sample and that hold a constrained row."""
    import mlxd.engine.runner as runner_module
    import mlxd.engine.scores as scores
    import mlxd.generation.sampling as sampling
    import mlxd.generation.verification as verification
    from mlxd.engine.warmup import warm_up_sampling

    called: set[str] = set()

    def spy(module, name):
        original = getattr(module, name)

        def spied(*args, **kwargs):
            called.add(name)
            return original(*args, **kwargs)
        monkeypatch.setattr(module, name, spied)

    for name in ("apply_top_k", "apply_top_p", "apply_min_p", "apply_repetition_penalty", "apply_presence_frequency",
                 "apply_logit_bias"):
        spy(sampling, name)
    spy(scores, "top_logprobs")
    for name in ("apply_step_masks", "verify_masks"):
        spy(runner_module, name)
    spy(verification, "sampler_plan")
    warm_up_sampling(runtime, list(range(1, 9)), speculate="ngram" if drafting == "ngram" else "",
                     speculate_depth=4 if drafting == "ngram" else 0)
    expected = {"apply_top_k", "apply_top_p", "apply_min_p", "apply_repetition_penalty", "apply_presence_frequency",
                "apply_logit_bias", "top_logprobs", "apply_step_masks"}
    assert called == (expected | {"sampler_plan", "verify_masks"} if drafting == "ngram" else expected)
