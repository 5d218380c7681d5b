"""bench admission on the fake model: a burst served beside a decoding stream, either way of prefilling, with
every burst stream's first token timed and the decoding stream's gaps measured."""

from __future__ import annotations

import pytest

from bench import common
from bench.suite import admission
from tests.helpers.fakes import fake_runtime


@pytest.mark.parametrize("mode", list(admission.MODES))
def test_a_burst_is_served_and_timed_either_way(mode):
    prompts = [[3 + i, 9, 4, 7, 11] for i in range(6)]
    with common.patched(admission.MODES[mode]):
        row = admission.burst(fake_runtime(), prompts, new_tokens=5, chunk=8)
    assert 0 < row["mean_first_ms"] <= row["last_first_ms"] <= row["burst_s"] * 1e3
    assert row["resident_gap_ms"] > 0
