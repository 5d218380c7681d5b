"""Random serving scenarios through the real scheduler and runner, each request checked against itself served alone.

A scenario (made from a seed) is what a busy daemon sees: requests arriving at random steps with prompts that
share prefixes, repeat an earlier prompt or continue an earlier answer (prefix-cache hits), long prompts (past a
sliding window and a cache's growth), every sampling setting, stop strings, logprobs and prompt logprobs or none,
token constraints, speculation on or capped per request (prompt lookup, or the runtime's draft model), readers
that fall behind (rows parked and brought back), cancellations, prefill chunks of any size and batches of any
width. Each request is then served by itself (a fresh scheduler, one row, no prefix cache, no speculation, one
prefill chunk): the batched run must give it the same tokens, logprobs, finish reason and count; a cancelled
request a prefix of them.

Two float32 runs that sum in other orders can part where the top two logits are within rounding of each other.
`compare` allows a parting only there: greedy, at a step whose reference margin between its top two log-probs is
below TIE (the reference asks for them).

    tests/engine/test_scenarios.py: a few seeds per architecture (CI)
    python -m tests.stress.scenarios --seeds 200 [--arch llama ...]: many
"""

from __future__ import annotations

import dataclasses
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mlxd.constraints import ConstraintSpec, GrammarCompiler, RowConstraint
from mlxd.constraints.compiler import mask_words
from mlxd.engine.constraint import TokenConstraint
from mlxd.engine.request import (
    ErrorEvent,
    FinalEvent,
    FinishReason,
    GenerationRequest,
    PromptImage,
    TokenEvent,
    TokenLogprob,
)
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.generation.params import SamplingParams
from tests.helpers.engine_runs import deliver, run

TIE = 1e-4          # nats: a greedy parting at a smaller reference margin is rounding, not a fault
LOGPROB_ABS = 1e-4  # batched against alone
PREFIX_CACHE_BYTES = [0, 32 << 10, 64 << 20]  # none, a few dozen positions of a fixture (evictions), plenty
# Real grammars (llguidance) a request may carry, beside CyclicConstraint; the fixtures' 320-token tokenizer spells
# lowercase letters, digits and JSON's punctuation.
GRAMMARS = [ConstraintSpec("regex", "[a-z]{1,12}"), ConstraintSpec("regex", "(yes|no|maybe) [0-9]{1,3}"),
            ConstraintSpec("regex", "[0-9]{1,4}(,[0-9]{1,4}){0,5}"),
            ConstraintSpec("json_schema", '{"type": "object", "properties": {"a": {"type": "integer"}, "b": '
                                          '{"type": "string", "maxLength": 6}}, "required": ["a", "b"]}',
                           max_whitespace=1),
            ConstraintSpec("json_object", max_whitespace=0)]


class CyclicConstraint:
    """Allows the tokens t with (t + step) % modulus == residue at each step, complete after `length` tokens: a
    grammar's interface (engine/constraint.py) with a state to roll back, cheap enough for any model."""

    def __init__(self, vocab: int, modulus: int, residue: int, length: int) -> None:
        self.mask_words = mask_words(vocab)
        self.vocab, self.modulus, self.residue, self.length = vocab, modulus, residue, length
        self.step = 0

    def fill_bitmask(self, out: np.ndarray) -> None:
        allowed = np.zeros(self.mask_words * 32, dtype=bool)
        allowed[: self.vocab] = (np.arange(self.vocab) + self.step) % self.modulus == self.residue
        out[:] = np.packbits(allowed, bitorder="little").view("<u4").view(np.int32)  # bit i of word w: 32w + i

    def consume(self, token: int) -> None:
        assert (token + self.step) % self.modulus == self.residue, f"token {token} outside the mask at {self.step}"
        self.step += 1

    def is_stopped(self) -> bool:
        return self.step >= self.length

    def rollback(self, tokens: int) -> None:
        self.step -= tokens


@dataclass
class Planned:
    """One request of a scenario: how to make it (afresh for each run) and what its client does."""

    name: str
    prompt: list[int]
    sampling: SamplingParams
    max_tokens: int
    ignore_eos: bool
    logprobs: bool
    top_logprobs: int
    speculation: int | None
    constraint: tuple[int, int, int] | ConstraintSpec | None  # CyclicConstraint's (modulus, residue, length)
    stops: tuple[str, ...]
    stop_token_ids: frozenset[int]
    prompt_logprobs: bool
    images: tuple[PromptImage, ...]
    arrives: int                              # the scheduler step before which it is added
    cancel_at: int | None                     # the step before which its client cancels
    read_chance: float                        # per step, the chance its client reads what is queued

    def asked_logprobs(self, reference: bool) -> tuple[bool, int]:
        """(logprobs, top_logprobs) as asked; alone (the reference), logprobs and one more alternative than asked,
        at least 2: the margins that tell a near-tie."""
        return (True, max(self.top_logprobs + 1, 2)) if reference else (self.logprobs, self.top_logprobs)

    def request(self, vocab: int, grammars: GrammarCompiler | None, reference: bool = False) -> GenerationRequest:
        constraint: TokenConstraint | None = None
        if isinstance(self.constraint, ConstraintSpec):
            assert grammars is not None
            constraint = RowConstraint(grammars.compile(self.constraint))
        elif self.constraint is not None:
            constraint = CyclicConstraint(vocab, *self.constraint)
        logprobs, top_logprobs = self.asked_logprobs(reference)
        return GenerationRequest(self.name, list(self.prompt), self.sampling, max_tokens=self.max_tokens,
                                 stops=self.stops, stop_token_ids=self.stop_token_ids,
                                 prompt_logprobs=self.prompt_logprobs, images=self.images, ignore_eos=self.ignore_eos,
                                 logprobs=logprobs, top_logprobs=top_logprobs, constraint=constraint,
                                 speculation=0 if reference else self.speculation)


@dataclass
class Scenario:
    seed: int
    options: SchedulerOptions
    grammars: GrammarCompiler | None
    kv_tokens: int | None = None  # a KV budget of this many tokens of one row: requests wait, or never fit
    context: int | None = None    # the model's context length, shortened: requests end at it, or never fit
    requests: list[Planned] = field(default_factory=list)

    def runtime(self, runtime: ModelRuntime) -> ModelRuntime:
        """The runtime as this scenario serves it (its context length)."""
        return runtime if self.context is None else dataclasses.replace(runtime, context_length=self.context)

    def __str__(self) -> str:
        o = self.options
        lines = [f"seed {self.seed}: chunk {o.prefill_chunk_size}, batch {o.max_batch_size}, context "
                 f"{self.context}, KV budget {self.kv_tokens} tokens, prefix cache {o.prefix_cache_bytes}, backlog "
                 f"{o.max_stream_backlog}, speculate {o.speculate or '-'} depth {o.speculate_depth} adaptive "
                 f"{o.speculate_adaptive}"]
        lines += [f"  {p.name}: prompt {p.prompt}, {p.sampling}, max {p.max_tokens}, stops {p.stops} "
                  f"{sorted(p.stop_token_ids)}, logprobs "
                  f"{p.logprobs}/{p.top_logprobs}, prompt logprobs {p.prompt_logprobs}, spec {p.speculation}, "
                  f"constraint {p.constraint}, arrives {p.arrives}, cancel {p.cancel_at}, reads {p.read_chance:.2f}"
                  for p in self.requests]
        return "\n".join(lines)


def make_scenario(seed: int, runtime: ModelRuntime, grammars: GrammarCompiler | None = None,
                  replicable: bool = False) -> Scenario:
    """A random scenario; with `grammars` (for the runtime's tokenizer) some requests carry a real grammar
    (GRAMMARS); `replicable`: no CyclicConstraint (a tensor-parallel group replicates only real grammars). Some
    prompts continue an
    earlier request's answer (a second turn: the prefix cache may hold both) and some requests stop at a string
    the answer holds: both read off the earlier request served alone."""
    rng = random.Random(seed)
    vocab = runtime.vocab_size
    speculate = "ngram" if rng.random() < 0.5 else ""  # the scheduler drafts only where the caches roll back
    options = SchedulerOptions(
        prefill_chunk_size=rng.choice([2, 3, 5, 8, 16, 64]), max_batch_size=rng.choice([1, 2, 3, 8]),
        prefix_cache_bytes=rng.choice(PREFIX_CACHE_BYTES), max_stream_backlog=rng.choice([0, 0, 2, 3]),
        speculate=speculate, speculate_depth=rng.choice([1, 2, 4]), speculate_adaptive=rng.random() < 0.5,
        kv_budget_bytes=256 << 20)
    tokens = list(range(3, vocab))

    def some(low: int, high: int) -> list[int]:
        return [rng.choice(tokens) for _ in range(rng.randint(low, high))]

    bases = [some(4, 24), some(4, 24)]
    scenario = Scenario(seed, options, grammars, rng.choice([None, None, 80, 200, 400]),
                        rng.choice([None, None, None, 48, 120]))
    served = scenario.runtime(runtime)
    for i in range(rng.randint(2, 7)):
        earlier = rng.choice(scenario.requests) if scenario.requests else None
        kind, images = rng.random(), ()
        if kind < 0.1:
            prompt = some(100, 300)  # past a window, a chunk and a cache's growth
        elif kind < 0.2 and earlier is not None:
            prompt, images = list(earlier.prompt), earlier.images  # the same prompt again
        elif kind < 0.35 and earlier is not None and earlier.cancel_at is None:
            prompt = earlier.prompt + serve_alone(served, earlier, grammars).tokens + some(1, 6)  # a second turn
            images = earlier.images
        else:
            prompt = (rng.choice(bases) if rng.random() < 0.6 else []) + some(1, 12)
        if not images and rng.random() < 0.3:  # a phrase said twice: something for prompt lookup to draft
            prompt = prompt + prompt[: max(1, len(prompt) // 2)]
        if not images and runtime.image_encoder is not None and rng.random() < 0.3:
            prompt, images = _with_image(runtime, prompt, rng.randint(0, len(prompt)), f"scenario {seed} r{i}")
        constraint: tuple[int, int, int] | ConstraintSpec | None = None
        if grammars is not None and rng.random() < 0.2:
            constraint = rng.choice(GRAMMARS)
        elif rng.random() < 0.2 and not replicable:
            modulus = rng.choice([2, 3, 5])
            constraint = (modulus, rng.randrange(modulus), rng.randint(1, 16))
        planned = Planned(
            name=f"r{i}", prompt=prompt, sampling=_sampling(rng),
            max_tokens=rng.choice([1, 2, 5, 9, 14, 20, 60, 0 if scenario.context else 20]),  # 0: to the context's end
            ignore_eos=rng.random() < 0.7, logprobs=rng.random() < 0.4, top_logprobs=rng.choice([0, 0, 1, 3]),
            speculation=rng.choice([None, None, 0, 1, 3]), constraint=constraint, stops=(), stop_token_ids=frozenset(),
            prompt_logprobs=rng.random() < 0.1, images=images, arrives=rng.randint(0, 12),
            cancel_at=rng.randint(1, 25) if rng.random() < 0.15 else None,
            read_chance=rng.choice([1.0, 1.0, 0.5, 0.1]))
        if rng.random() < 0.2:  # a stop string, or a stop token, that its answer holds
            answer = serve_alone(served, planned, grammars).tokens
            at = rng.randrange(len(answer)) if answer else 0
            if answer and rng.random() < 0.5:
                planned.stop_token_ids = frozenset({answer[at]})
            elif text := runtime.decode_text(answer[at:at + 2]):
                planned.stops = (text,)
        scenario.requests.append(planned)
    return scenario


def _with_image(runtime: ModelRuntime, prompt: list[int], at: int, name: str) -> tuple[list[int], tuple[PromptImage]]:
    """The prompt with an image's tokens at `at`, and the image: random pixels, a digest of its own."""
    assert runtime.image_encoder is not None
    tokens = runtime.image_encoder.model.image_tokens
    pixels = np.random.default_rng(zlib.crc32(name.encode())).standard_normal(
        (3, tokens.image_size, tokens.image_size)).astype(np.float32)
    image = PromptImage(position=at + 1, length=tokens.per_image, pixels=pixels, digest=name)
    return prompt[:at] + tokens.span() + prompt[at:], (image,)


def _sampling(rng: random.Random) -> SamplingParams:
    """Greedy or seeded sampling, with penalties over a window short enough to slide within a verify step."""
    penalties = dict(repetition_penalty=rng.choice([1.0, 1.0, 1.3]), repetition_window=rng.choice([64, 64, 3]),
                     presence_penalty=rng.choice([0.0, 0.0, 0.5]), frequency_penalty=rng.choice([0.0, 0.0, 0.7]))
    if rng.random() < 0.5:
        return SamplingParams(temperature=0.0, **penalties)
    return SamplingParams(temperature=rng.choice([0.6, 1.0]), top_k=rng.choice([0, 20]), top_p=rng.choice([1.0, 0.9]),
                          min_p=rng.choice([0.0, 0.05]), logit_bias={rng.randrange(3, 60): rng.choice([-4.0, 4.0])},
                          seed=rng.randrange(1 << 30), **penalties)


@dataclass
class Outcome:
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    final: FinalEvent | None = None
    error: BaseException | None = None

    def take(self, events: list) -> None:
        for event in events:
            if isinstance(event, TokenEvent):
                self.tokens += event.token_ids
                self.text += event.text
                self.logprobs += event.logprobs
            elif isinstance(event, FinalEvent):
                self.final = event
            elif isinstance(event, ErrorEvent):
                self.error = event.error


def serve(runtime: ModelRuntime, scenario: Scenario) -> dict[str, Outcome]:
    """The scenario's requests through one scheduler; each client reads (or not) after every step."""
    rng = random.Random(scenario.seed + 1)
    runtime = scenario.runtime(runtime)
    scheduler = _budgeted(Scheduler(runtime, scenario.options), scenario.kv_tokens)
    requests = {p.name: p.request(runtime.vocab_size, scenario.grammars) for p in scenario.requests}
    outcomes = {name: Outcome() for name in requests}
    step, last = 0, max(p.arrives for p in scenario.requests)
    while scheduler.has_work() or step <= last:
        for p in scenario.requests:
            if p.arrives == step:
                scheduler.add(requests[p.name])
            if p.cancel_at == step:
                requests[p.name].cancel.cancel("client")
        deliver(scheduler.step())
        for p in scenario.requests:
            if rng.random() < p.read_chance:
                outcomes[p.name].take(requests[p.name].events.drain())
        step += 1
        assert step < 5_000, "the scheduler never finished"
    for name, request in requests.items():
        outcomes[name].take(request.events.drain())
    return outcomes


def serve_alone(runtime: ModelRuntime, planned: Planned, grammars: GrammarCompiler | None,
                kv_tokens: int | None = None) -> Outcome:
    """The request by itself: one row, its prompt in one chunk, no prefix cache, no speculation."""
    scheduler = _budgeted(Scheduler(runtime, SchedulerOptions(prefill_chunk_size=4096, max_batch_size=1,
                                                              kv_budget_bytes=256 << 20)), kv_tokens)
    request = planned.request(runtime.vocab_size, grammars, reference=True)
    run(scheduler, request)
    outcome = Outcome()
    outcome.take(request.events.drain())
    return outcome


def _budgeted(scheduler: Scheduler, kv_tokens: int | None) -> Scheduler:
    if kv_tokens is not None:
        scheduler.budget.budget_bytes = scheduler.budget.need([kv_tokens])
    return scheduler


def compare(planned: Planned, got: Outcome, want: Outcome) -> str | None:
    """What is wrong with the batched outcome against the request served alone, or None."""
    if planned.cancel_at is not None and got.final is not None and got.final.finish_reason is FinishReason.CANCELLED:
        # Cancelled: what it got is a beginning of what it gets alone (which may be nothing, or a refusal)
        # Its text may end in text held back and flushed at the cancel: U+FFFD where a byte run was cut (completed
        # alone), or the start of a stop string that alone went on to match (cut from alone's text).
        seen_alone = want.text + (want.final.matched_stop if want.final is not None else "")
        if len(got.tokens) > len(want.tokens) or not seen_alone.startswith(got.text.rstrip("\ufffd")):
            return f"cancelled with more than alone: {got.tokens} {got.text!r} / {want.tokens} {want.text!r}"
        return _parting(planned, got, want, len(got.tokens))[1]
    if got.error is not None or want.error is not None:
        if type(got.error) is type(want.error) and not got.tokens:  # both refused alike (too large for the budget)
            return None
        return f"error: batched {got.error!r}, alone {want.error!r}"
    if got.final is None or want.final is None:
        return "no final event"
    parted, fault = _parting(planned, got, want, min(len(got.tokens), len(want.tokens)))
    if parted:
        return fault
    if len(got.tokens) != len(want.tokens):
        return f"{len(got.tokens)} tokens batched, {len(want.tokens)} alone: {got.tokens} / {want.tokens}"
    if got.text != want.text:
        return f"text: batched {got.text!r}, alone {want.text!r}"
    if (got.final.finish_reason, got.final.completion_tokens) != (want.final.finish_reason,
                                                                   want.final.completion_tokens):
        return f"final: batched {got.final.finish_reason} {got.final.completion_tokens}, alone " \
               f"{want.final.finish_reason} {want.final.completion_tokens}"
    if planned.prompt_logprobs:
        got_prompt, want_prompt = got.final.prompt_logprobs, want.final.prompt_logprobs
        if [p.token_id for p in got_prompt] != [p.token_id for p in want_prompt] or any(
                abs(g.logprob - w.logprob) > LOGPROB_ABS for g, w in zip(got_prompt, want_prompt)):
            return f"prompt logprobs: batched {got_prompt}, alone {want_prompt}"
    if planned.constraint is not None and got.final.constraint_complete != want.final.constraint_complete:
        return f"constraint complete: batched {got.final.constraint_complete}, alone {want.final.constraint_complete}"
    if planned.logprobs:
        if len(got.logprobs) != len(got.tokens):
            return f"{len(got.logprobs)} logprobs for {len(got.tokens)} tokens"
        for i, (g, w) in enumerate(zip(got.logprobs, want.logprobs)):
            if abs(g.logprob - w.logprob) > LOGPROB_ABS:
                return f"logprob {i}: batched {g.logprob}, alone {w.logprob}"
            if planned.top_logprobs and [t.token_id for t in g.top] != [t.token_id for t in w.top][:len(g.top)]:
                if min(_margin_at(w, k) for k in range(len(g.top))) >= TIE:
                    return f"top logprobs {i}: batched {g.top}, alone {w.top}"
    return None


def _parting(planned: Planned, got: Outcome, want: Outcome, n: int) -> tuple[bool, str | None]:
    """Whether the first n tokens part, and if so the fault (None where a greedy near-tie fell the other way:
    nothing after it compares)."""
    for i in range(n):
        if got.tokens[i] != want.tokens[i]:
            if planned.sampling.greedy and _margin(want.logprobs[i]) < TIE:
                return True, None
            return True, (f"token {i}: batched {got.tokens[i]}, alone {want.tokens[i]} (alone's margin "
                          f"{_margin(want.logprobs[i]):.2e}); batched {got.tokens}, alone {want.tokens}")
    return False, None


def _margin(logprob: TokenLogprob) -> float:
    return _margin_at(logprob, 0)


def _margin_at(logprob: TokenLogprob, k: int) -> float:
    """The gap between the k-th and (k+1)-th best log-probs (inf where there is no next)."""
    values = [t.logprob for t in logprob.top]
    return values[k] - values[k + 1] if k + 1 < len(values) else float("inf")


def check(runtime: ModelRuntime, seed: int, grammars: GrammarCompiler | None = None,
          replicable: bool = False) -> list[str]:
    """Every fault of scenario `seed` (empty when all its requests yield what they yield alone)."""
    scenario = make_scenario(seed, runtime, grammars, replicable)
    batched = serve(runtime, scenario)
    return faults_of(scenario, batched, lambda planned: serve_alone(scenario.runtime(runtime), planned, grammars,
                                                                    scenario.kv_tokens))


def faults_of(scenario: Scenario, batched: dict[str, Outcome], alone: Callable[[Planned], Outcome]) -> list[str]:
    """Each request's fault against `alone(request)`, after the scenario itself; empty when there is none."""
    faults = [f"{p.name}: {fault}" for p in scenario.requests if (fault := compare(p, batched[p.name], alone(p)))]
    return [str(scenario), *faults] if faults else []


# One of each cache kind: full attention (llama), sliding windows (gemma3_text, gpt_oss with sinks), KV shared across
# layers (gemma4), a latent cache (glm4_moe_lite), recurrent layers beside attention (qwen3_5, nemotron_h); and
# images in the prompt (gemma3's vision tower).
ARCHITECTURES = ["llama", "gemma3_text", "gpt_oss", "gemma4", "glm4_moe_lite", "qwen3_5", "nemotron_h", "gemma3"]

