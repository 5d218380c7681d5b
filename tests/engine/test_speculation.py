"""N-gram drafting and the adaptive depth (engine/speculation.py), without a model."""

from __future__ import annotations

from mlxd.engine.speculation import NgramIndex, Speculator


def test_drafts_continue_the_latest_longest_match():
    index = NgramIndex([1, 2, 3, 4, 9, 2, 3, 5, 6, 7, 2, 3])
    assert index.draft(3) == [5, 6, 7]            # "2 3" last seen before 5 6 7 (the later match wins)
    index.extend([5])
    assert index.draft(2) == [6, 7]               # "2 3 5" now matches its 3-gram
    assert NgramIndex([1, 2, 3]).draft(4) == []   # nothing repeats
    assert NgramIndex([4, 4, 4]).draft(5) == [4]  # a match never reads past the end


def test_depth_follows_acceptance_and_measured_cost():
    spec = Speculator(max_depth=4)
    assert spec.depth(0.9, 4) == 0                # no plain step measured yet
    spec.timed(1, 0.010)
    assert spec.depth(0.9, 4) == 4                # unmeasured depths are assumed cheap: tried first
    for length in range(2, 6):
        spec.timed(length, 0.010 * (1 + 0.5 * (length - 1)))
    assert spec.depth(0.9, 4) >= 2                # worth it when drafts are mostly accepted
    assert spec.depth(0.2, 4) == 0                # not when they are mostly rejected
    assert Speculator(max_depth=3, adaptive=False).depth(0.0, 3) == 3


def test_rows_learn_acceptance_from_probes_and_verified_runs():
    spec = Speculator(max_depth=4)
    spec.start(0, [1, 2, 3, 1, 2], cap=None)
    spec.start(1, [1, 2, 3], cap=0)                 # a request that turned speculation off
    assert spec.probe({0: 10, 1: 10}) == {}
    spec.observe(0, [], [7])                       # it would have drafted 3; 7 came: a rejection
    spec.timed(1, 0.01)
    assert spec.drafts({0: 10, 1: 10}) == {}     # nothing to copy after a new token
    spec.observe(0, [], [9])
    for _ in range(30):
        spec.observe(0, [5, 5], [5, 5, 5])         # every draft accepted
    assert spec.drafts({0: 10, 1: 10}) != {}
    assert 1 not in spec.drafts({0: 10, 1: 10})
    assert spec.drafts({0: 1}) == {}               # one token left: nothing to draft
