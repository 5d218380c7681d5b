"""Random serving scenarios (tests/engine/scenarios.py) on every cache kind the architectures bring: each request,
batched among others with arrivals, prefix-cache hits, speculation, constraints (real grammars among them), stop
strings, images, parked readers and cancellations, yields what it yields alone. A few seeds per architecture here;
`python -m tests.stress.scenarios` runs many (with a draft model, with mask processes)."""

from __future__ import annotations

import pytest

from mlxd.constraints import GrammarCompiler
from mlxd.engine.runtime import ModelRuntime
from tests.engine.scenarios import ARCHITECTURES, check
from tests.engine.threaded_scenarios import check_threaded
from tests.helpers.parity import fixture_grammars, fixture_runtime

SEEDS = range(4)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def served(request) -> tuple[ModelRuntime, GrammarCompiler]:
    runtime = fixture_runtime(request.param)
    return runtime, fixture_grammars(request.param, runtime)


@pytest.mark.parametrize("seed", SEEDS)
def test_each_request_yields_what_it_yields_alone(served, seed):
    runtime, grammars = served
    assert check(runtime, seed, grammars) == []


@pytest.mark.parametrize("seed", range(3))
def test_through_the_worker_thread_with_a_client_thread_each(seed):
    """The same, with the worker's thread stepping and each request's client a thread of its own (submits, reads
    at its own pace, cancels through the worker), as the service drives it."""
    runtime = fixture_runtime("llama")
    assert check_threaded(lambda: fixture_runtime("llama"), runtime, seed, fixture_grammars("llama", runtime)) == []
