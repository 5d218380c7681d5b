"""Soak at CI size: 200 mixed requests at concurrency 8 (bench/soak.py runs 1,000 at 16)."""

import collections

import pytest

from daemon_process import FIXTURES, start_daemon
from mlxd_client import Client
from soak import check, plan, references, soak


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = start_daemon(FIXTURES / "parity" / "llama", "--max-queue", "16", workdir=tmp_path_factory.mktemp("soak"))
    yield d
    assert d.stop() == 0, d.stderr()
    assert "Traceback" not in d.stderr(), d.stderr()


def test_soak_every_stream_ends_right_and_repeatable_ones_repeat(daemon):
    specs = plan(200, seed=7)
    expected = references(daemon.addr, specs)
    outcomes = soak(daemon.addr, specs, concurrency=8)
    for outcome in outcomes:
        check(outcome, expected)
    kinds = collections.Counter(o.spec.kind for o in outcomes if o.final is not None or o.code is not None)
    assert sum(kinds.values()) == 200 and len(kinds) == 7
    with Client(daemon.addr) as client:
        assert client.health() == "SERVING"
