"""The random serving scenarios (tests/engine/scenarios.py) on 2 ranks of a TCP ring on loopback: each request,
batched among others with arrivals, prefix-cache hits, speculation, grammars, stops, slow readers and
cancellations, yields what it yields alone on the same group, and the follower replays every call in step (a
scenario that drove the ranks apart would end in its Divergence)."""

from __future__ import annotations

import pytest

from tests.helpers.ranks import run_ranks

pytestmark = pytest.mark.process

# Full attention, recurrent layers beside attention, and images in the prompt.
ARCHS = ("llama", "qwen3_5", "gemma3")
SEEDS = 3


def test_each_request_yields_what_it_yields_alone_on_two_ranks(tmp_path):
    faults = run_ranks("tests.helpers.tp_scenarios", [str(tmp_path), "0", str(SEEDS), *ARCHS], 2, tmp_path,
                       timeout=600)[0]
    assert faults == ""
