"""The random serving scenarios (tests/engine/scenarios.py) as a host sends them: over gRPC to a real daemon process
started with the scenario's settings, each request a client thread that streams it (token-id prompt, its options
and constraint in GenerationOptions), reads at its own pace and sends a Cancel RPC at its cancel time. Each
request is then sent alone to a daemon that serves one sequence at a time, without a prefix cache or speculation:
what a request streams (token ids, text, logprobs, the final's reason and counts) must be what it streams alone
(scenarios.compare). The engine's scenarios check the same below gRPC; this adds the service between: option
conversion, the event sink and its backpressure, streaming, Cancel."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

from mlxd.constraints import ConstraintSpec
from mlxd.engine.request import FinalEvent, FinishReason, TokenLogprob, TopLogprob
from mlxd_client import Client, MlxdClientError, pb
from tests.engine.scenarios import (
    Outcome,
    Planned,
    Scenario,
    faults_of,
    make_scenario,
)
from tests.helpers.daemon_process import Daemon, start_daemon
from tests.helpers.parity import PARITY, fixture_grammars, fixture_runtime

TICK = 0.01  # seconds per scenario step
ALONE = ("--max-batch-size", "1", "--prefix-cache-mb", "0", "--prefill-chunk", "4096")


def daemon_args(scenario: Scenario) -> list[str]:
    o = scenario.options
    args = ["--max-batch-size", str(o.max_batch_size), "--prefill-chunk", str(o.prefill_chunk_size),
            "--prefix-cache-mb", "64" if o.prefix_cache_bytes else "0"]
    if o.max_stream_backlog:  # (0, the engine's "never", is the daemon's default of 256)
        args += ["--max-stream-backlog", str(o.max_stream_backlog)]
    if o.speculate:
        args += ["--speculate", o.speculate, "--speculate-depth", str(o.speculate_depth)]
        args += [] if o.speculate_adaptive else ["--speculate-fixed"]
    return args


def options(planned: Planned, reference: bool = False) -> dict[str, Any]:
    """The request's GenerationOptions as `Client.generate` takes them (None: left unset); the reference's are
    Planned.asked_logprobs' and no speculation."""
    s = planned.sampling
    logprobs, top_logprobs = planned.asked_logprobs(reference)
    constraint = None
    if isinstance(planned.constraint, ConstraintSpec):
        spec = planned.constraint
        constraint = pb.Constraint(max_whitespace=spec.max_whitespace or 0,
                                   **{spec.kind: pb.JsonObject() if spec.kind == "json_object" else spec.source})
    return dict(max_tokens=planned.max_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                min_p=s.min_p, repetition_penalty=s.repetition_penalty, repetition_window=s.repetition_window,
                presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty,
                logit_bias=dict(s.logit_bias), seed=s.seed, stop=list(planned.stops),
                stop_token_ids=sorted(planned.stop_token_ids), ignore_eos=planned.ignore_eos, logprobs=logprobs,
                # (the service refuses top_logprobs without logprobs; the engine ignores them)
                top_logprobs=top_logprobs if logprobs else 0, prompt_logprobs=planned.prompt_logprobs,
                constraint=constraint, speculation=0 if reference else planned.speculation)


def stream(client: Client, planned: Planned, name: str, reference: bool = False, cancel_at: float | None = None,
           pause: random.Random | None = None) -> Outcome:
    """Send one request and read its stream to the end: an Outcome as the engine's scenarios keep them."""
    outcome = Outcome()
    try:
        for response in client.generate(tokens=planned.prompt, request_id=name, timeout=120,
                                        **options(planned, reference)):
            if cancel_at is not None and time.monotonic() >= cancel_at:
                client.cancel(name)
                cancel_at = None
            if response.HasField("chunk"):
                chunk = response.chunk
                outcome.tokens += chunk.token_ids
                outcome.text += chunk.text
                outcome.logprobs += [_logprob(lp) for lp in chunk.logprobs]
                if pause is not None and pause.random() > planned.read_chance:
                    time.sleep(TICK * pause.randint(1, 8))  # a slow reader
            else:
                outcome.final = _final(response.final)
    except MlxdClientError as error:  # a status: compare reports it
        outcome.error = error
    return outcome


def _logprob(lp: pb.TokenLogprob) -> TokenLogprob:
    return TokenLogprob(lp.token_id, lp.logprob, [TopLogprob(t.token_id, t.logprob) for t in lp.top])


def _final(final: pb.Final) -> FinalEvent:
    reason = FinishReason[pb.FinishReason.Name(final.finish_reason).removeprefix("FINISH_REASON_")]
    return FinalEvent(reason, final.usage.prompt_tokens, final.usage.completion_tokens, matched_stop=final.matched_stop,
                      stop_token_id=final.stop_token_id, prompt_logprobs=[_logprob(lp) for lp in final.prompt_logprobs],
                      constraint_complete=final.constraint_complete)


def serve(daemon: Daemon, scenario: Scenario) -> dict[str, Outcome]:
    """The scenario's requests, each from a thread of its own, over one channel."""
    outcomes: dict[str, Outcome] = {}
    start = time.monotonic()

    def client(c: Client, planned: Planned) -> None:
        time.sleep(planned.arrives * TICK)
        cancel_at = None if planned.cancel_at is None else start + planned.cancel_at * TICK
        outcomes[planned.name] = stream(c, planned, f"{scenario.seed}-{planned.name}", cancel_at=cancel_at,
                                        pause=random.Random(f"{scenario.seed} {planned.name}"))

    with Client(daemon.addr) as c:
        threads = [threading.Thread(target=client, args=(c, p)) for p in scenario.requests]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
    return outcomes


def check(arch: str, seed: int, alone: Daemon) -> list[str]:
    """Every fault of scenario `seed` on a daemon of the fixture `arch` (with its own settings), each request
    checked against itself on `alone` (a daemon of the same fixture with ALONE's settings)."""
    runtime = fixture_runtime(arch)
    scenario = make_scenario(seed, runtime, fixture_grammars(arch, runtime))
    scenario.context = scenario.kv_tokens = None  # a daemon's own; the engine's scenarios cover both
    for planned in scenario.requests:
        planned.max_tokens = planned.max_tokens or 20  # not to the end of the fixture's 2,048-token context
        planned.images = ()  # token-id prompts only (images are MultimodalGenerate's)
        if planned.constraint is not None and not isinstance(planned.constraint, ConstraintSpec):
            planned.constraint = None  # a test-only constraint: no protocol spells it
    daemon = start_daemon(PARITY / arch, *daemon_args(scenario))
    try:
        batched = serve(daemon, scenario)
    finally:
        code = daemon.stop()
    with Client(alone.addr) as c:
        faults = faults_of(scenario, batched, lambda p: stream(c, p, f"alone-{seed}-{p.name}", reference=True))
    return faults if code == 0 else [*faults, f"the daemon exited {code}: {daemon.stderr()[-2000:]}"]


def alone_daemon(arch: str) -> Daemon:
    return start_daemon(Path(PARITY / arch), *ALONE)
