"""The random serving scenarios over gRPC (service_scenarios.py): a daemon process per scenario, each request a
client thread, each checked against itself sent alone to a one-sequence daemon. A few seeds here;
`python -m tests.stress.scenarios --service` runs many."""

from __future__ import annotations

import pytest

from tests.service import service_scenarios

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def alone():
    daemon = service_scenarios.alone_daemon("llama")
    yield daemon
    assert daemon.stop() == 0, daemon.stderr()


@pytest.mark.parametrize("seed", range(3))
def test_each_request_streams_what_it_streams_alone(alone, seed):
    assert service_scenarios.check("llama", seed, alone) == []
