"""`serve --speculate-depth` left out: the method's own cap (engine/speculation.py default_depth), 8 drafts a step by
prompt lookup, whose drafts cost nothing and whose copies run long, 4 by a draft model, which pays a decode step for
each; a depth given is kept whichever drafts."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlxd.cli import _add_serve
from mlxd.engine.speculation import DRAFT_MODEL_DEPTH, NGRAM_DEPTH
from mlxd.engine.worker import WorkerOptions


def test_prompt_lookup_drafts_deeper_than_a_draft_model_by_default():
    assert (NGRAM_DEPTH, DRAFT_MODEL_DEPTH) == (8, 4)
    assert WorkerOptions(Path("m"), speculate="ngram").scheduler_options().speculate_depth == NGRAM_DEPTH
    drafted = WorkerOptions(Path("m"), draft_model_path=Path("d"))
    assert drafted.depth() == drafted.scheduler_options().speculate_depth == DRAFT_MODEL_DEPTH


def test_a_given_depth_is_kept():
    for draft in (None, Path("d")):
        options = WorkerOptions(Path("m"), speculate="ngram", speculate_depth=3, draft_model_path=draft)
        assert options.depth() == options.scheduler_options().speculate_depth == 3


def test_the_flag_left_out_means_the_methods_default():
    parser = argparse.ArgumentParser()
    _add_serve(parser.add_subparsers())
    assert parser.parse_args(["serve", "--model", "m", "--speculate", "ngram"]).speculate_depth == 0
    assert parser.parse_args(["serve", "--model", "m", "--speculate-depth", "5"]).speculate_depth == 5
