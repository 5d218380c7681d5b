"""The random serving scenarios (scenarios.py) through the real worker thread instead of a scheduler stepped by
hand: each request's client is a thread that submits it at its arrival time, reads its events at its own pace (a
slow one makes its row park), and cancels it through the worker at its cancel time, as the service's threads do.
The timing is the machine's, so which step a request joins, parks or is cancelled at varies from run to run; what
must not vary is what each request yields (scenarios.compare against the request served alone)."""

from __future__ import annotations

import dataclasses
import queue
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mlxd.constraints import GrammarCompiler
from mlxd.engine.request import ErrorEvent, FinalEvent
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.worker import Worker, WorkerOptions
from mlxd.errors import MlxdError
from tests.engine.scenarios import Outcome, Planned, Scenario, faults_of, make_scenario, serve_alone

TICK = 0.004  # seconds per scenario step: arrivals, cancels and a slow reader's pauses are multiples of it


def start_worker(scenario: Scenario, load: Callable[[], ModelRuntime]) -> Worker:
    """A worker serving `load()`'s model (made on the worker's thread, as MLX needs) with the scenario's settings."""
    o = scenario.options

    def runtime(_: Worker) -> ModelRuntime:
        made = load()
        return made if scenario.context is None else dataclasses.replace(made, context_length=scenario.context)

    worker = Worker(WorkerOptions(Path("fixture"), prefill_chunk_size=o.prefill_chunk_size,
                                  max_batch_size=o.max_batch_size, kv_cache_bytes=o.kv_budget_bytes,
                                  prefix_cache_bytes=o.prefix_cache_bytes, max_stream_backlog=o.max_stream_backlog,
                                  speculate=o.speculate, speculate_depth=o.speculate_depth,
                                  speculate_adaptive=o.speculate_adaptive), load=runtime)
    worker.start()
    worker.wait_ready(60)
    return worker


def serve_threaded(worker: Worker, scenario: Scenario, vocab: int) -> dict[str, Outcome]:
    outcomes = {p.name: Outcome() for p in scenario.requests}
    threads = [threading.Thread(target=_client, args=(worker, p, vocab, scenario.grammars, outcomes[p.name],
                                                      random.Random(f"{scenario.seed} {p.name}")))
               for p in scenario.requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive(), "a client never got its final event"
    return outcomes


def _client(worker: Worker, planned: Planned, vocab: int, grammars: GrammarCompiler | None, outcome: Outcome,
            rng: random.Random) -> None:
    start = time.monotonic()
    time.sleep(planned.arrives * TICK)
    request = planned.request(vocab, grammars)
    try:
        worker.submit(request)
    except MlxdError as error:
        outcome.error = error
        return
    cancel_at = None if planned.cancel_at is None else start + planned.cancel_at * TICK
    while outcome.final is None and outcome.error is None:
        if cancel_at is not None and time.monotonic() >= cancel_at:
            worker.cancel(request.request_id)
            cancel_at = None
        try:
            event = request.events.get(timeout=TICK)
        except queue.Empty:
            continue
        outcome.take([event])
        if not isinstance(event, (FinalEvent, ErrorEvent)) and rng.random() > planned.read_chance:
            time.sleep(TICK * rng.randint(1, 8))  # a slow reader: its backlog grows meanwhile


def check_threaded(load: Callable[[], ModelRuntime], reference: ModelRuntime, seed: int,
                   grammars: GrammarCompiler | None = None) -> list[str]:
    """Every fault of scenario `seed` served by a worker thread; `reference` serves each request alone (a model
    loaded on this thread: the worker's lives on its own)."""
    scenario = make_scenario(seed, reference, grammars)
    scenario.kv_tokens = None  # a worker takes its budget in bytes; the hand-stepped scenarios cover the tokens
    worker = start_worker(scenario, load)
    try:
        batched = serve_threaded(worker, scenario, reference.vocab_size)
    finally:
        worker.stop()
    return faults_of(scenario, batched, lambda planned: serve_alone(scenario.runtime(reference), planned, grammars))
