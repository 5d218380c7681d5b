"""Fuzz: random JSON Schemas, regexes, Lark and GBNF grammars (well-formed, subtly wrong, hostile and garbage),
a few at once, sent over gRPC to one `mlxd serve` on the tiny llama fixture with small max_tokens. Every request
ends OK, INVALID_ARGUMENT or RESOURCE_EXHAUSTED (never INTERNAL, UNKNOWN or a hang); an OK one ends STOP or LENGTH,
and one the daemon calls complete satisfies its constraint: JSON validates with jsonschema, and a regex or grammar
built from a random expression tree matches that tree's Python regex. The daemon stays SERVING, and its log has
no traceback when it exits. MLXD_CONSTRAINT_FUZZ_EXAMPLES scales the example counts (1.0: about a minute)."""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxd_client import Client, MlxdClientError, pb
from tests.fuzz.sending import fuzzed_daemon
from tests.helpers.daemon_process import FIXTURES
from tests.service.constraint_strategies import Fuzzed, grammars, json_schemas, regexes

pytestmark = [pytest.mark.process, pytest.mark.stress]

LLAMA = FIXTURES / "parity" / "llama"
SCALE = float(os.environ.get("MLXD_CONSTRAINT_FUZZ_EXAMPLES", "1"))
DOCUMENTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
FINISHED = {pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH}
# Far beyond any of these requests (a few tokens on a 320-token model, compiles bounded by llguidance's limits).
DEADLINE_SECONDS = 60.0


def fuzz_settings(examples: int):
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    # fuzzed_daemon checks on the way out that the daemon exits 0 with no traceback in its log.
    with fuzzed_daemon(LLAMA, tmp_path_factory.mktemp("constraint-fuzz"), "--max-queue", "16") as pair:
        yield pair[0]


# -- sending --------------------------------------------------------------------------------------------------

SAMPLING = st.one_of(st.just({"temperature": 0.0}),
                     st.integers(0, 2**31).map(lambda seed: {"temperature": 1.0, "seed": seed}),
                     st.integers(0, 2**31).map(lambda seed: {"temperature": 0.7, "top_k": 5, "seed": seed}))


@st.composite
def batches(draw, constraints: st.SearchStrategy[Fuzzed]) -> list[tuple[Fuzzed, dict]]:
    """One to three constrained requests sent at once, so that they share decode steps (one may fail at compile
    or while it runs while the others go on)."""
    requests = []
    for _ in range(draw(st.integers(1, 3))):
        options = dict(draw(SAMPLING), max_tokens=draw(st.integers(1, 12)),
                       tokens=draw(st.lists(st.integers(3, 319), min_size=1, max_size=6)))
        requests.append((draw(constraints), options))
    return requests


def send(addr: str, fuzzed: Fuzzed, options: dict) -> str:
    """Run one request; its outcome's name. Fails on an undocumented status or a complete output that does not
    satisfy its constraint."""
    with Client(addr) as client:
        try:
            result = client.complete(constraint=fuzzed.constraint, timeout=DEADLINE_SECONDS, **options)
        except MlxdClientError as error:
            assert error.code in DOCUMENTED, (error.code, error.details, fuzzed.constraint)
            assert error.details.startswith("constraint"), error.details  # only the constraint is fuzzed
            return error.code.name
    final = result.final
    assert final is not None and final.finish_reason in FINISHED, (final, fuzzed.constraint)
    if final.constraint_complete:
        assert final.finish_reason == pb.FINISH_REASON_STOP, final
        fuzzed.check_complete(result.text)
        return "OK complete"
    assert final.finish_reason == pb.FINISH_REASON_LENGTH, (final, fuzzed.constraint)
    return "OK cut"


OUTCOMES: dict[str, dict[str, int]] = {}


def run_batch(daemon, kind: str, batch: list[tuple[Fuzzed, dict]]) -> None:
    with ThreadPoolExecutor(max_workers=len(batch)) as pool:
        outcomes = list(pool.map(lambda request: send(daemon.addr, *request), batch))
    counts = OUTCOMES.setdefault(kind, {})
    for outcome in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1
    with Client(daemon.addr) as client:
        assert client.health(timeout=5) == "SERVING"


@fuzz_settings(1000)
@given(batch=batches(json_schemas()))
def test_random_json_schemas(served, batch):
    run_batch(served, "json_schema", batch)


@fuzz_settings(800)
@given(batch=batches(regexes()))
def test_random_regexes(served, batch):
    run_batch(served, "regex", batch)


@fuzz_settings(1000)
@given(batch=batches(grammars()))
def test_random_grammars(served, batch):
    run_batch(served, "grammar", batch)


def test_the_daemon_serves_on_with_a_clean_log(served):
    with Client(served.addr) as client:
        assert client.health(timeout=5) == "SERVING"
        result = client.complete(tokens=[1, 5, 9, 14], temperature=0.0, max_tokens=8,
                                 constraint=pb.Constraint(regex="[ab]{3}"))
        assert result.final.constraint_complete and re.fullmatch("[ab]{3}", result.text)
    assert "Traceback" not in served.stderr(), served.stderr()
    print("outcomes:", json.dumps(OUTCOMES, sort_keys=True))
