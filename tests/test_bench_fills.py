"""The benchmarks' stand-ins and verdicts for this round's GPU questions: bench/suite/fake_constraints.py's
constraints (every token allowed, the fill free, asleep or spinning a core), speculation_inprocess's oracle drafts
(every draft holds), bench/suite/tensor_parallel.py's `parting` (where two greedy runs part, with each run's margin
there), host_contention's reading of CPU lists."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bench.suite import fake_constraints, speculation_inprocess
from bench.suite.tensor_parallel import parting
from mlxd.constraints.compiler import mask_words
from mlxd.engine import speculation as speculation_module
from mlxd.engine.speculation import NgramIndex
from tests.helpers.fakes import fake_runtime


@pytest.mark.parametrize("kind", ["allow-all", "sleep:8", "spin:8"])
def test_fake_constraints_allow_every_token_and_never_complete(kind):
    constraint = fake_constraints.constraint_for(kind, 49_152, rows=4)
    assert constraint.mask_words == mask_words(49_152)
    out = np.zeros(constraint.mask_words, dtype=np.int32)
    start = time.perf_counter()
    constraint.fill_bitmask(out)
    took = time.perf_counter() - start
    assert (out == -1).all()
    if kind != "allow-all":
        assert took >= 0.002 * 0.9  # 8 ms a step, this row's quarter
    constraint.consume(5)
    constraint.rollback(1)
    assert not constraint.is_stopped()


def test_few_allows_the_next_n_ids_at_each_step_wrapping_around():
    constraint = fake_constraints.constraint_for("few:4", 10, rows=1)
    out = np.zeros(constraint.mask_words, dtype=np.int32)

    def allowed() -> list[int]:
        constraint.fill_bitmask(out)
        return np.nonzero(np.unpackbits(out.view(np.uint8), bitorder="little"))[0].tolist()
    assert allowed() == [0, 1, 2, 3]
    constraint.consume(2)
    constraint.consume(5)
    assert allowed() == [0, 1, 8, 9]
    constraint.rollback(1)
    assert allowed() == [4, 5, 6, 7] and not constraint.is_stopped()


@pytest.mark.parametrize("kind", ["sleep", "allow-all:3", "schema:1", "few:x"])
def test_a_fill_kind_it_does_not_know_is_refused(kind):
    with pytest.raises(SystemExit, match="--fills"):
        fake_constraints.constraint_for(kind, 100, rows=1)


def test_parting_names_the_first_difference_and_both_margins():
    one = [(5, 1.5), (7, 0.03125), (9, 2.0)]
    assert parting(one, [(5, 1.25), (8, 0.0625), (9, 2.0)]) == "token 1 (margins 0.0312 / 0.0625)"
    assert parting(one, list(one)) == "equal"


def test_cpu_lists_read_as_linux_writes_them():
    from bench.suite.host_contention import cpu_list

    assert cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert cpu_list("5") == {5}


@pytest.mark.parametrize("streams", [1, 3])
def test_oracle_drafts_are_all_accepted(streams):
    """speculation_inprocess --oracle: rows drafting their recorded greedy continuation have every draft accepted
    (each drafted token is the one the target decodes there), so its rate is the verify mechanism's ceiling."""
    runtime = fake_runtime()
    prompt = [5, 9, 3, 7, 11, 2, 8]
    plain = speculation_inprocess.greedy_continuation(runtime, prompt, 24)
    assert len(plain) == 24
    speculation_inprocess.OracleIndex.CONTINUATIONS[tuple(prompt)] = plain
    with speculation_inprocess.oracle_drafts():
        row = speculation_inprocess.run(runtime, prompt, streams, 24, None, depth=3)
    assert row["drafted"] > 0 and row["acceptance"] == 1.0
    assert speculation_module.NgramIndex is NgramIndex  # restored: later speculators look drafts up again


def test_a_half_fill_constrains_every_other_stream(monkeypatch):
    """batch_inprocess's `half:KIND`: a batch mixing constrained and free rows, every other stream constrained."""
    from bench.suite import batch_inprocess

    seen: list[list[bool]] = []
    monkeypatch.setattr(batch_inprocess, "drive",
                        lambda scheduler, requests: seen.append([r.constraint is not None for r in requests]) or {})
    runtime = fake_runtime()
    for fill in ("half:allow-all", "allow-all", "free"):
        batch_inprocess.run(runtime, [[1, 2, 3]] * 4, 4, grammars=object(), fill=fill)  # type: ignore[arg-type]
    assert seen == [[True, False, True, False], [True] * 4, [False] * 4]


def test_variant_rounds_constrain_the_streams_as_fill_says(monkeypatch):
    """batch_inprocess --variant with --fill: both sides of the comparison run that fill (it was ignored until
    session 47, so `FILL=half:schema constrained-variant` had constrained every stream)."""
    from bench.suite import batch_inprocess

    fills: list[str] = []
    monkeypatch.setattr(batch_inprocess, "run", lambda runtime, prompts, new_tokens, grammars, fill="schema":
                        fills.append(fill) or {"decode_tps": 1.0})
    batch_inprocess.compare(fake_runtime(), [[1, 2, 3]], 4, None, ["other:bench.common.NOISY=0.2"], rounds=2,
                            fill="half:allow-all")
    assert fills == ["half:allow-all"] * 6  # a warm-up each, then two rounds each
