"""constraints/mask_pool.py: rows' masks filled by replicas of their matchers in mask processes equal the masks the
rows fill here, through rows joining and leaving, drafts told and rolled back, a grammar past its limits and a
process killed mid-walk."""

from __future__ import annotations

import os
import random
import signal
import time

import llguidance
import numpy as np
import pytest

from mlxd.cli import _mask_processes
from mlxd.constraints import ConstraintError, GrammarCompiler, RowConstraint, mask_pool
from mlxd.constraints.mask_pool import AUTO, AUTO_PROCESSES, MaskPool, processes_for
from mlxd.constraints.matcher import fill_bitmasks
from tests.constraints.conftest import TINY_EOS, TINY_WIDTH
from tests.constraints.walks import compile_spec

SPECS = [("json_object", ""), ("regex", "[0-9]{1,6}(-[a-z]{1,5})*"), ("lark", 'start: ("ab" | "c")+ "."'),
         ("json_schema", '{"type": "object", "properties": {"n": {"type": "integer"}, "tag": {"type": "string"}},'
                         ' "required": ["n", "tag"]}')]


@pytest.fixture()
def pooled(tiny_json):
    compiler = GrammarCompiler(tiny_json, TINY_WIDTH, TINY_EOS, mask_processes=2)
    yield compiler
    compiler.close()


def _allowed(mask: np.ndarray) -> list[int]:
    return [int(t) for t in np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little"))]


def _pair(tiny, pooled, spec) -> tuple[RowConstraint, RowConstraint]:
    return RowConstraint(compile_spec(tiny, *spec)), RowConstraint(compile_spec(pooled, *spec))


def _fill_both(here: list[RowConstraint], there: list[RowConstraint]) -> np.ndarray:
    words = here[0].mask_words
    alone, pooled = np.zeros((len(here), words), np.int32), np.zeros((len(there), words), np.int32)
    assert fill_bitmasks(here, alone) == [None] * len(here)
    assert fill_bitmasks(there, pooled) == [None] * len(there)
    assert np.array_equal(alone, pooled)
    return alone


def _step(rows: list[tuple[RowConstraint, RowConstraint]], masks: np.ndarray, rng: random.Random) -> None:
    """Each row takes a random allowed token (rarely EOS), in both copies; some first tell a draft and undo it."""
    for (here, there), mask in zip(rows, masks):
        if here.is_stopped():
            continue
        allowed = _allowed(mask)
        choices = [t for t in allowed if t not in TINY_EOS] or allowed
        if rng.random() < 0.3:  # speculation's draft_masks: told, then rolled back
            draft = rng.choice(choices)
            for row in (here, there):
                row.consume(draft)
                row.rollback(1)
        token = rng.choice(choices)
        here.consume(token)
        there.consume(token)


def _walk(tiny, pooled, steps: int, rng: random.Random, rows: list[tuple[RowConstraint, RowConstraint]]) -> None:
    for step in range(steps):
        live = [pair for pair in rows if not pair[0].is_stopped()]
        if step % 5 == 4 and live:  # one row leaves, another joins
            rows.remove(rng.choice(live))
            rows.append(_pair(tiny, pooled, rng.choice(SPECS)))
        rows[:] = [pair for pair in rows if not pair[0].is_stopped()] or [_pair(tiny, pooled, SPECS[0])]
        masks = _fill_both([h for h, _ in rows], [t for _, t in rows])
        _step(rows, masks, rng)
        time.sleep(0.02)  # replicas are made in the background: give them time to come ready


def test_masks_filled_in_processes_equal_masks_filled_here(tiny, pooled):
    rng = random.Random(0)
    rows = [_pair(tiny, pooled, SPECS[j % len(SPECS)]) for j in range(8)]
    _until_in_processes([there for _, there in rows], 5)  # 8 rows: 3 filled here, 5 by the 2 processes
    _walk(tiny, pooled, 60, rng, rows)
    pool = compile_spec(pooled, *SPECS[0]).pool
    assert pool is not None and pool.filled_in_processes > 50


def test_without_a_share_of_its_own_every_row_is_filled_in_the_processes(tiny, pooled, monkeypatch):
    monkeypatch.setattr(mask_pool, "KEEP_A_SHARE", False)
    rows = [_pair(tiny, pooled, SPECS[j % len(SPECS)]) for j in range(8)]
    _until_in_processes([there for _, there in rows], 8)
    _walk(tiny, pooled, 10, random.Random(2), rows)


def test_a_verify_steps_draft_masks_are_filled_in_processes_as_here(tiny, pooled):
    """engine/masks.py draft_masks fills a verify step's positions row-batched, so the processes fill their share:
    with random drafts (some refused, some past a complete constraint) the masks and cut drafts equal those filled
    here, and both copies of each row end as they began."""
    from mlxd.engine.masks import draft_masks

    rng = random.Random(1)
    rows, pool = _rows_in_processes(tiny, pooled, 8, 5)
    in_processes = 0  # masks of draft positions the processes filled
    for _ in range(12):
        masks = _fill_both([h for h, _ in rows], [t for _, t in rows])
        drafts = []
        for mask in masks:  # a walk of allowed tokens where the row is, each replaced now and then by any token
            allowed = _allowed(mask)
            drafts.append([rng.choice(allowed) if rng.random() < 0.8 else rng.randrange(TINY_WIDTH)
                           for _ in range(rng.randrange(5))])
        before, lengths = pool.filled_in_processes, [len(there.tokens) for _, there in rows]
        here = draft_masks([h for h, _ in rows], drafts, TINY_WIDTH)
        there = draft_masks([t for _, t in rows], drafts, TINY_WIDTH)
        in_processes += pool.filled_in_processes - before
        assert here.drafts == there.drafts and np.array_equal(here.masks, there.masks)
        assert not here.failures and not there.failures
        assert [len(t.tokens) for _, t in rows] == lengths   # rolled back
        _step(rows, masks, rng)
        rows[:] = [pair for pair in rows if not pair[0].is_stopped()] or [_pair(tiny, pooled, SPECS[0])]
    assert in_processes > 12 * 5, in_processes


def _until_in_processes(rows: list[RowConstraint], count: int) -> np.ndarray:
    """Fill (at the rows' present state) until `count` of the rows' masks come from processes in one fill."""
    pool = rows[0].grammar.pool
    assert pool is not None
    out = np.zeros((len(rows), rows[0].mask_words), np.int32)
    for _ in range(200):
        before = pool.filled_in_processes
        fill_bitmasks(rows, out)
        if pool.filled_in_processes - before == count:
            return out
        time.sleep(0.02)
    raise AssertionError("the mask processes never filled")


def test_a_grammar_past_its_limits_fails_its_rows_in_the_processes_too(tiny_json):
    # A lexer fuel so low that the third mask of a JSON object fails (consuming a token needs less: it passes).
    limits = llguidance.LLParserLimits(step_lexer_fuel=300, verbose_errors=False)
    compiler = GrammarCompiler(tiny_json, TINY_WIDTH, TINY_EOS, limits=limits, mask_processes=2)
    try:
        rows = [RowConstraint(compile_spec(compiler, "json_object", "")) for _ in range(6)]
        _until_in_processes(rows, 4)  # 2 rows a process, 2 filled here
        failures: list[ConstraintError | None] = []
        for token in compiler.tokenizer.tokenize_str('{"abc": 1}')[:2]:
            for row in rows:
                row.consume(token)
            failures = fill_bitmasks(rows, np.zeros((len(rows), rows[0].mask_words), np.int32))
        assert [f.code if f else None for f in failures] == ["too_large"] * 6
    finally:
        compiler.close()


def _rows_in_processes(tiny, pooled, count: int,
                       in_processes: int) -> tuple[list[tuple[RowConstraint, RowConstraint]], MaskPool]:
    """`count` pairs of rows (here and pooled), `in_processes` of the pooled ones filled by the two processes (the
    rest here, which fills a share as one more process); and the pool."""
    rows = [_pair(tiny, pooled, SPECS[j % len(SPECS)]) for j in range(count)]
    _until_in_processes([there for _, there in rows], in_processes)
    pool = compile_spec(pooled, *SPECS[0]).pool
    assert pool is not None
    return rows, pool


def test_rows_of_a_killed_process_are_filled_here_until_a_new_process_takes_its_place(tiny, pooled):
    rng = random.Random(1)
    rows, pool = _rows_in_processes(tiny, pooled, 6, 4)
    pool.restart_seconds = 0.5
    killed = pool.process_ids()[0]
    os.kill(killed, signal.SIGKILL)
    _walk(tiny, pooled, 5, rng, rows)  # the masks stay equal throughout
    assert killed not in pool.process_ids()
    time.sleep(0.6)
    _walk(tiny, pooled, 5, rng, rows)  # the replacement starts, its rows' replicas are made
    assert len(pool.process_ids()) == 2 and killed not in pool.process_ids()
    before = pool.filled_in_processes
    _walk(tiny, pooled, 30, rng, rows)
    assert pool.filled_in_processes - before > 30


def test_a_stalled_process_is_dropped_and_its_rows_filled_here(tiny, pooled):
    rng = random.Random(2)
    rows, pool = _rows_in_processes(tiny, pooled, 6, 4)
    pool.answer_seconds = 0.3
    stalled = pool.process_ids()[0]
    os.kill(stalled, signal.SIGSTOP)
    try:
        started = time.monotonic()
        _walk(tiny, pooled, 10, rng, rows)  # the masks stay equal; one step waits answer_seconds
        assert time.monotonic() - started < 30  # not forever: the stalled process is given up on
        assert stalled not in pool.process_ids()  # dropped (a replacement comes with another id)
    finally:
        try:
            os.kill(stalled, signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_auto_starts_mask_processes_only_on_a_gpu_host_with_cores_to_spare():
    assert _mask_processes("auto") == AUTO and _mask_processes("0") == 0 and _mask_processes("4") == 4
    for wrong in ("-2", "two", ""):
        with pytest.raises(Exception, match="a count or auto"):
            _mask_processes(wrong)
    assert processes_for(AUTO, "Device(gpu, 0)", 16) == AUTO_PROCESSES
    assert processes_for(AUTO, "Device(gpu, 0)", 4) == 0   # the worker, gRPC and tokenizing need the few cores
    assert processes_for(AUTO, "Device(cpu, 0)", 64) == 0  # the forward pass runs on those cores
    assert processes_for(AUTO, "Device(gpu, 0)", None) == 0
    assert processes_for(2, "Device(cpu, 0)", 2) == 2 and processes_for(0, "Device(gpu, 0)", 16) == 0
