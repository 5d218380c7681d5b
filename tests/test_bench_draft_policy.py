"""bench/suite/draft_policy.py: the draft-model policy stepped at given costs, with no model (seeded, not timed).
Issue 19's case (b): drafts that never hold must leave plain decoding's speed (>= 0.97x) to the policy's probes;
drafts that hold at cheap verify steps must turn speculation on and keep it on."""

from __future__ import annotations

import pytest

from bench.suite.draft_policy import Costs, simulate


@pytest.mark.parametrize("streams", [1, 16])
def test_drafts_that_never_hold_cost_only_the_probes(streams):
    ratio, drafting, steps = simulate(streams, acceptance=0.0, costs=Costs(), rounds=4)
    assert ratio >= 0.97
    assert drafting <= 0.05 * steps


@pytest.mark.parametrize("streams", [1, 16])
def test_drafts_that_hold_keep_speculation_on(streams):
    ratio, drafting, steps = simulate(streams, acceptance=0.9, costs=Costs(draft_ms=0.5), rounds=4)
    assert ratio > 2.0
    assert drafting >= 0.7 * steps


def test_speculation_stays_off_where_a_verify_step_costs_more_than_its_drafts_bring():
    # Two plain steps' worth a verify step and 4 ms a draft pass: 3.4 tokens at acceptance 0.8 do not pay for it.
    ratio, drafting, steps = simulate(1, acceptance=0.8, costs=Costs(verify_ratio=2.0, draft_ms=4.0), rounds=4)
    assert ratio >= 0.97
    assert drafting <= 0.05 * steps
