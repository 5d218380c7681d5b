"""Where a new row's acceptance starts and how its first observations move it (engine/speculation.py
NEW_ROW_CAP and PRIOR_WEIGHT), without a model."""

from __future__ import annotations

import pytest

from mlxd.engine import speculation
from mlxd.engine.speculation import Speculator
from tests.engine.test_speculation import _DraftsNothingUseful


def test_a_new_row_starts_from_the_acceptance_the_rows_have_shown():
    spec = Speculator(max_depth=4)
    spec.start(0, [1, 2, 3], cap=None)
    assert spec._rows[0].acceptance == 0.5         # nothing seen yet
    for _ in range(200):
        spec.observe(0, [5, 5], [7])               # every first draft rejected
    spec.start(1, [1, 2, 3], cap=None)
    assert spec._rows[1].acceptance < 0.05


def _taught_to_accept(spec: Speculator) -> Speculator:
    spec.start(0, [1, 2, 3], cap=None)
    for _ in range(200):
        spec.observe(0, [7, 7], [7, 7, 7])         # every draft accepted: a copy task
    assert spec._prior > 0.9
    spec.start(1, [1, 2, 3], cap=None)
    return spec


def test_a_new_row_starts_from_a_copy_tasks_acceptance_unless_capped(monkeypatch):
    """speculation.NEW_ROW_CAP (0.5; None: uncapped): a new n-gram row starts no higher than it and learns its own
    from there."""
    assert _taught_to_accept(Speculator(max_depth=4))._rows[1].acceptance == 0.5
    monkeypatch.setattr(speculation, "NEW_ROW_CAP", None)
    assert _taught_to_accept(Speculator(max_depth=4))._rows[1].acceptance > 0.9


def test_a_draft_models_new_row_starts_from_the_whole_prior(monkeypatch):
    """A draft model's rows learn only from drafts verified (probes between are rare): a new row keeps the prior,
    capped or not."""
    monkeypatch.setattr(speculation, "NEW_ROW_CAP", 0.5)
    spec = _taught_to_accept(Speculator(max_depth=4, model=_DraftsNothingUseful()))  # type: ignore[arg-type]
    assert spec._rows[1].acceptance > 0.9


def test_a_rows_first_observations_weigh_more_with_a_prior_weight(monkeypatch):
    """speculation.PRIOR_WEIGHT (4; None: the EMA alone): a row's n-th observation weighs 1 / (PRIOR_WEIGHT + n)
    until that falls to the EMA's weight, so a new row's first drafts correct a wrong start whichever way it is
    wrong."""
    monkeypatch.setattr(speculation, "PRIOR_WEIGHT", 2.0)
    spec = _taught_to_accept(Speculator(max_depth=4))
    start = spec._rows[1].acceptance
    spec.observe(1, [5, 5], [6])                 # its first draft rejected
    assert spec._rows[1].acceptance == pytest.approx(start * 2 / 3)
    spec.observe(1, [5, 5], [6])
    assert spec._rows[1].acceptance == pytest.approx(start / 2)
    for _ in range(20):
        spec.observe(1, [5], [5, 5])            # accepted: past 8 observations at the EMA's weight again
    before = spec._rows[1].acceptance
    spec.observe(1, [5], [6])
    assert spec._rows[1].acceptance == pytest.approx(before * 0.9)
    monkeypatch.setattr(speculation, "PRIOR_WEIGHT", None)
    spec = _taught_to_accept(Speculator(max_depth=4))
    start = spec._rows[1].acceptance
    spec.observe(1, [5, 5], [6])
    assert spec._rows[1].acceptance == pytest.approx(start * 0.9)


def test_a_draft_models_rows_learn_at_the_ema_whatever_the_prior_weight(monkeypatch):
    """A draft model's rows observe only drafts verified and rare probes: a first rejection weighed more would turn
    speculation off for many steps (bench draft_policy), so PRIOR_WEIGHT is for n-gram rows only."""
    monkeypatch.setattr(speculation, "PRIOR_WEIGHT", 2.0)
    spec = _taught_to_accept(Speculator(max_depth=4, model=_DraftsNothingUseful()))  # type: ignore[arg-type]
    start = spec._rows[1].acceptance
    spec.observe(1, [5, 5], [6])
    assert spec._rows[1].acceptance == pytest.approx(start * 0.9)
