"""Whether llguidance fills several rows' masks in parallel: the rows' masks filled by 1 thread and by N, the wall
time against the process's CPU time (a parallel fill takes less wall than CPU time).

    python -m bench mask_threads [--model smollm2|PATH --rows 16 --threads 2 --states 40] [--warm]

Without --warm, each way fills copies of one matcher walked to the same state (random allowed tokens of
constrained_decode's schema), fresh copies each state: llguidance's own executor (`fill_next_token_bitmask_par`,
what engine/masks.py uses) and Python threads each calling `compute_bitmask` (which releases the GIL) on matchers
of their own tokenizers (fresh matchers: colder caches than copies). With --warm, each way keeps its rows for the
whole walk, as a request keeps its matcher (each row walks its own random allowed tokens, the same walk for every
way): the executor's copies of the grammar's matcher on 1 and N threads, N Python threads, each filling its
share of rows made from a tokenizer of its own, and the daemon's mask processes (serve --mask-processes N:
constraints/mask_pool.py, N processes holding replicas of the rows' matchers, this one filling a share too).
Session 21, llguidance 1.9.1, 16 rows, medians of 60 states, without --warm (ms, wall / CPU): the H200's host (16
cores) 1.43 / 1.34 on one executor thread, 1.95 / 2.28 on four, 1.80 / 4.57 on four Python threads; this 2-core
machine 1.77 / 1.51, 1.75 / 1.27 on two, 3.44 / 4.67 on two Python threads. The executor's threads gain nothing.
Session 22, --warm, this 2-core machine (16 rows, medians of 40 steps, ms wall): executor 3.27 on one thread and
3.28 on two, two Python threads 3.83, 2 mask processes and this one 3.45 (a round trip to two sleeping processes
alone costs ~0.5 ms on this VM); the H200's host not yet measured.
"""
from __future__ import annotations

import functools
import random
import resource
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import llguidance
import numpy as np
from llguidance.numpy import fill_next_token_bitmask, fill_next_token_bitmask_par

from bench import common
from bench.suite.constrained_decode import CONSTRAINT
from mlxd.constraints.compiler import CompiledGrammar, GrammarCompiler
from mlxd.constraints.matcher import RowConstraint, fill_bitmasks
from mlxd.loading.model_source import load_model_tokenizer
from mlxd.service.constraints import spec_of


def _timed(work: Callable[[], object]) -> tuple[float, float]:
    """(wall ms, CPU ms of the whole process) of work()."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    work()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return wall * 1e3, (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1e3


def _allowed(mask: np.ndarray) -> list[int]:
    """The token ids a mask row (int32 words) allows."""
    return [int(t) for t in np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little"))]


def _walk(matcher: llguidance.LLMatcher, words: int, eos: set[int], rng: random.Random) -> int:
    """Consume one random allowed token (not EOS while others are allowed) and return it."""
    mask = np.zeros((1, words), np.int32)
    fill_next_token_bitmask(matcher, mask)
    allowed = _allowed(mask[0])
    choice = rng.choice([t for t in allowed if t not in eos] or allowed)
    if not matcher.consume_token(choice):
        raise RuntimeError(f"the grammar refused its own allowed token {choice}")
    return choice


def _matcher_at(tokenizer: llguidance.LLTokenizer, grammar: CompiledGrammar, limits: llguidance.LLParserLimits,
                tokens: list[int]) -> llguidance.LLMatcher:
    matcher = llguidance.LLMatcher(tokenizer, grammar.grammar, log_level=0, limits=limits)
    for token in tokens:
        matcher.consume_token(token)
    return matcher


def _fill_on_threads(groups: list[list[llguidance.LLMatcher]]) -> None:
    """Each group's masks computed on a thread of its own."""
    threads = [threading.Thread(target=lambda g=g: [m.compute_bitmask() for m in g]) for g in groups]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _warm(rows: Sequence[llguidance.LLMatcher | _Told], fill: Callable[[np.ndarray], object], words: int, steps: int,
          eos: set[int]) -> list[tuple[float, float]]:
    """Each step: the rows' masks filled by `fill` (timed), then each row given a random allowed token."""
    rng, out, times = random.Random(0), np.zeros((len(rows), words), np.int32), []
    for _ in range(steps):
        times.append(_timed(functools.partial(fill, out)))
        for j, row in enumerate(rows):
            if row.is_stopped():
                continue
            allowed = _allowed(out[j])
            if not row.consume_token(rng.choice([t for t in allowed if t not in eos] or allowed)):
                raise RuntimeError("the grammar refused its own allowed token")
    return times[10:]


def warm_ways(serialized: str, compiler: GrammarCompiler, grammar: CompiledGrammar, rows: int, threads: int,
              steps: int, eos: set[int]) -> dict[str, list[tuple[float, float]]]:
    """--warm: (wall, CPU) ms of each step's fill, per way."""
    words, ways = grammar.mask_words, {}
    for n in sorted({1, threads}):
        executor = llguidance.LLExecutor(num_threads=n)
        copies = [grammar.new_matcher() for _ in range(rows)]

        def fill_par(out: np.ndarray, e: llguidance.LLExecutor = executor,
                     c: list[llguidance.LLMatcher] = copies) -> None:
            fill_next_token_bitmask_par(e, [(m, j) for j, m in enumerate(c)], out)

        ways[f"llguidance's executor, {n} thread(s)"] = _warm(copies, fill_par, words, steps, eos)
    own = [llguidance.LLTokenizer(serialized, n_vocab=compiler.width, eos_token=list(compiler.eos_token_ids))
           for _ in range(threads)]
    mine = [llguidance.LLMatcher(own[j % threads], grammar.grammar, log_level=0, limits=compiler.limits)
            for j in range(rows)]
    shares = [list(range(k, rows, threads)) for k in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        def fill(out: np.ndarray) -> None:
            def share(indices: list[int]) -> None:
                for j in indices:
                    fill_next_token_bitmask(mine[j], out[j:j + 1])
            list(pool.map(share, shares))
        ways[f"{threads} Python threads, own tokenizers"] = _warm(mine, fill, words, steps, eos)
    pooled = GrammarCompiler(serialized, compiler.width, list(compiler.eos_token_ids), mask_processes=threads)
    try:
        ways[f"{threads} mask processes and this one"] = _warm_pooled(pooled.compile(spec_of(CONSTRAINT)), rows, steps,
                                                                             eos)
    finally:
        pooled.close()
    return ways


def _warm_pooled(grammar: CompiledGrammar, rows: int, steps: int, eos: set[int]) -> list[tuple[float, float]]:
    """_warm's walk through the daemon's mask processes, timed once every row's replica is ready (the process
    time left out: it is the processes' own)."""
    pool, pooled = grammar.pool, [RowConstraint(grammar) for _ in range(rows)]
    assert pool is not None
    out = np.zeros((rows, grammar.mask_words), np.int32)
    for _ in range(500):  # until a fill comes from the processes for all but this process's share
        before = pool.filled_in_processes
        fill_bitmasks(pooled, out)
        if pool.filled_in_processes - before >= rows * len(pool.process_ids()) // (len(pool.process_ids()) + 1):
            break
        time.sleep(0.02)
    return _warm([_Told(row) for row in pooled], lambda o: fill_bitmasks(pooled, o), grammar.mask_words, steps, eos)


class _Told:
    """A RowConstraint walked as _warm walks llguidance's matchers."""

    def __init__(self, row: RowConstraint) -> None:
        self.row = row

    def is_stopped(self) -> bool:
        return self.row.is_stopped()

    def consume_token(self, token: int) -> bool:
        self.row.consume(token)
        return True


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    common.add_model_args(p)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--states", type=int, default=40, help="grammar states timed (one token apart)")
    p.add_argument("--warm", action="store_true", help="rows kept for the whole walk, as requests keep theirs")
    args = p.parse_args(argv)
    tokenizer = load_model_tokenizer(common.resolve_model(args.model))
    compiler = GrammarCompiler(tokenizer.serialized, tokenizer.vocab_size, tokenizer.eos_token_ids)
    grammar = compiler.compile(spec_of(CONSTRAINT))
    eos = set(tokenizer.eos_token_ids)
    if args.warm:
        ways = warm_ways(tokenizer.serialized, compiler, grammar, args.rows, args.threads, args.states + 10, eos)
        _report(f"{args.rows} rows kept for a walk of {args.states + 10} tokens, medians of the last "
                f"{args.states} steps' fills (ms):", ways)
        return
    executors = {n: llguidance.LLExecutor(num_threads=n) for n in (1, args.threads)}
    # The Python threads' matchers: each thread's of its own tokenizer (its own token trie), nothing shared.
    own = [llguidance.LLTokenizer(tokenizer.serialized, n_vocab=compiler.width,
                                  eos_token=list(compiler.eos_token_ids)) for _ in range(args.threads)]
    walker, history = grammar.new_matcher(), []
    rng = random.Random(0)
    times: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.states):
        history.append(_walk(walker, grammar.mask_words, eos, rng))
        for n in sorted(executors):
            copies = [walker.deep_copy() for _ in range(args.rows)]
            out = np.zeros((args.rows, grammar.mask_words), np.int32)
            pairs = [(m, j) for j, m in enumerate(copies)]
            times.setdefault(f"llguidance's executor, {n} thread(s)", []).append(_timed(
                functools.partial(fill_next_token_bitmask_par, executors[n], pairs, out)))
        groups = [[_matcher_at(own[k], grammar, compiler.limits, history) for _ in range(args.rows // args.threads)]
                  for k in range(args.threads)]
        times.setdefault(f"{args.threads} Python threads, own tokenizers", []).append(_timed(
            functools.partial(_fill_on_threads, groups)))
    _report(f"{args.rows} rows' masks at one grammar state, medians over {args.states} states (ms):", times)


def _report(title: str, ways: dict[str, list[tuple[float, float]]]) -> None:
    print(title)
    print(common.table(["how", "wall", "CPU"], [[label, float(np.median([w for w, _ in v])),
                                                 float(np.median([c for _, c in v]))] for label, v in ways.items()]))
