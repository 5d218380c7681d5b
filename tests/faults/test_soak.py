"""Soak at CI size: 200 mixed requests at concurrency 8 after 100 unmeasured ones (tests/stress/soak.py runs
1,000 at 16)."""

import collections

import pytest

from mlxd_client import Client
from tests.faults.soak import check, growth, memory, plan, references, soak
from tests.helpers.daemon_process import FIXTURES, start_daemon

pytestmark = [pytest.mark.process, pytest.mark.stress]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    # No prefix cache: idle, MLX then holds the weights and nothing else, exactly (tests/stress/soak.py soaks with one).
    d = start_daemon(FIXTURES / "parity" / "llama", "--max-queue", "16", "--prefix-cache-mb", "0",
                     workdir=tmp_path_factory.mktemp("soak"))
    yield d
    assert d.stop() == 0, d.stderr()
    assert "Traceback" not in d.stderr(), d.stderr()


def test_soak_every_stream_ends_right_and_repeatable_ones_repeat(daemon):
    specs = plan(200, seed=7)
    expected = references(daemon.addr, specs)
    # A warm-up hundred first, unmeasured, as tests/stress/soak.py does: the resident set takes one-off steps while
    # the first concurrent batches meet new shapes (BLAS threads' buffers, allocator arenas; CI once saw +28% between
    # the first and second hundred with MLX active memory flat), and those are not leaks.
    soak(daemon.addr, plan(100, seed=8), concurrency=8)
    outcomes, samples = [], []
    for first in (0, 100):
        outcomes += soak(daemon.addr, specs[first:first + 100], concurrency=8)
        samples.append(memory(daemon.addr, daemon.proc.pid))
    for outcome in outcomes:
        check(outcome, expected)
    # Memory after the first measured hundred and after the second. Idle, MLX active memory is the weights
    # (under 1 MB), so one leaked KV cache fails the 5% bound. The resident set moves by up to ~8% (once 17%)
    # either way between hundreds on a 2-core machine, so its bound here only catches gross leaks;
    # tests/stress/soak.py reports it against 5% over 1,000 requests.
    grew = growth(samples)
    mib = [(round(m.resident_bytes / 2**20, 1), round(m.mlx_active_bytes / 2**20, 2)) for m in samples]
    assert grew["mlx_active"] < 0.05, (grew, "MiB resident, MLX active:", mib)
    assert grew["resident"] < 0.2 and grew["resident+mlx_active"] < 0.2, (grew, "MiB resident, MLX active:", mib)
    kinds = collections.Counter(o.spec.kind for o in outcomes if o.final is not None or o.code is not None)
    assert sum(kinds.values()) == 200 and len(kinds) == 7
    with Client(daemon.addr) as client:
        assert client.health() == "SERVING"
