"""`serve --speculate-depth` left out: the model's own cap (ModelRuntime.speculation_depth, engine/speculation.py
default_depth), 8 drafts a step by prompt lookup, whose drafts cost nothing and whose copies run long; 4 by a draft
model, which pays a decode step for each, and for a model with recurrent layers, whose verify step runs them token by
token and holds their states after each position. A depth given is kept whatever drafts; the daemon's scheduler gets
the resolved one."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlxd.cli import _add_serve
from mlxd.engine.speculation import NGRAM_DEPTH, SHALLOW_DEPTH
from mlxd.engine.worker import Worker, WorkerOptions
from mlxd.models.cache import KVCache
from mlxd.models.recurrent_cache import RecurrentCache
from tests.helpers.fakes import FakeModel, fake_runtime


class _Hybrid(FakeModel):
    """make_cache as a hybrid's: an attention layer and a recurrent one (no forward pass is run here)."""

    def make_cache(self):
        return [KVCache(), RecurrentCache()]


def test_prompt_lookup_drafts_deeper_than_a_draft_model_or_a_recurrent_model():
    assert (NGRAM_DEPTH, SHALLOW_DEPTH) == (8, 4)
    runtime = fake_runtime()
    assert runtime.speculation_depth(0) == NGRAM_DEPTH
    assert fake_runtime(_Hybrid()).speculation_depth(0) == SHALLOW_DEPTH
    runtime.draft_model = FakeModel(seed=1)
    assert runtime.speculation_depth(0) == SHALLOW_DEPTH


def test_a_given_depth_is_kept():
    drafted = fake_runtime()
    drafted.draft_model = FakeModel(seed=1)
    for runtime in (fake_runtime(), fake_runtime(_Hybrid()), drafted):
        assert runtime.speculation_depth(3) == 3


def test_the_flag_left_out_reaches_the_scheduler_as_the_models_default():
    parser = argparse.ArgumentParser()
    _add_serve(parser.add_subparsers())
    assert parser.parse_args(["serve", "--model", "m", "--speculate", "ngram"]).speculate_depth == 0
    assert parser.parse_args(["serve", "--model", "m", "--speculate-depth", "5"]).speculate_depth == 5
    scheduler = Worker(WorkerOptions(Path("m"), speculate="ngram"), lambda _: fake_runtime())._load()
    assert scheduler._speculator is not None and scheduler._speculator.max_depth == NGRAM_DEPTH
