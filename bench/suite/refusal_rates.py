"""How often a model's greedy argmax is refused by its grammar, on requests a user sends: what decides where
checked greedy steps (engine/checked_greedy.py) replace masked ones on a GPU.

    python -m bench refusal_rates [--model smollm2|PATH] [--cases record,tool,list,object,strings,short-strings]
                                  [--max-tokens 160] [--max-whitespace N]

A pipelined batch checks its greedy constrained rows while their refusal rates sum to at most
`checked_greedy.EXPECTED_REFUSALS`; the GPU benchmarks measure a random-weight model, whose argmax says nothing of
how often a real model's is refused when asked for JSON. Each case here is one greedy request through one
Scheduler on this thread (not pipelined: every step checks its token, so every token is observed): `record` (a
person's record filled from a text, speculative's `json` task under its schema), `tool` (a weather question
answered by a tool call under a schema of two tools), `list` (three fruits and their colours under an array
schema), `object` (a description as any JSON object, what `format: "json"` asks), and `strings`
(constrained_decode's benchmark schema after a prompt of random tokens, the GPU benchmarks' request; its whitespace
bound 2, the others the daemon's default unless --max-whitespace says; `short-strings` the same with strings of at most
12 characters, constrained_decode's default). Prints the start of each case's output,
then its tokens, checks, refusals, the refusal rate and how many such rows a step may hold before their rates pass
EXPECTED_REFUSALS.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import mlx.core as mx

from bench import common
from bench.suite.constrained_decode import constraint as strings_constraint
from bench.suite.speculative import RECORD_SCHEMA, TASKS
from mlxd.engine import checked_greedy
from mlxd.engine.request import ErrorEvent, GenerationRequest, TokenEvent
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import SchedulerOptions
from mlxd.engine.warmup import run_to_completion
from mlxd.generation.params import SamplingParams
from mlxd.loading.model_source import load_model_and_tokenizer
from mlxd.service.constraints import Grammars
from mlxd_client import pb

TOOLS_SCHEMA = {"type": "object", "properties": {
    "name": {"enum": ["get_weather", "search_web"]},
    "arguments": {"type": "object", "properties": {"city": {"type": "string"}, "date": {"type": "string"}},
                  "required": ["city", "date"], "additionalProperties": False}},
    "required": ["name", "arguments"], "additionalProperties": False}
FRUITS_SCHEMA = {"type": "array", "minItems": 3, "maxItems": 3, "items": {
    "type": "object", "properties": {"fruit": {"type": "string"}, "colour": {"type": "string"}},
    "required": ["fruit", "colour"], "additionalProperties": False}}


def _schema(schema: dict) -> pb.Constraint:
    return pb.Constraint(json_schema=json.dumps(schema))  # the daemon's whitespace bound, as hosts leave it


# name -> (chat messages, or None: random prompt tokens; the constraint)
CASES: dict[str, tuple[list[dict] | None, pb.Constraint]] = {
    "record": (TASKS["json"], _schema(RECORD_SCHEMA)),
    "tool": ([{"role": "user", "content": "Tools: get_weather(city, date), search_web(query). What will the weather "
                                          "be in Paris tomorrow? Answer with the tool call as JSON."}],
             _schema(TOOLS_SCHEMA)),
    "list": ([{"role": "user", "content": "List three fruits and their colours as JSON."}], _schema(FRUITS_SCHEMA)),
    "object": ([{"role": "user", "content": "Describe the planet Mars as a JSON object."}],
               pb.Constraint(json_object=pb.JsonObject())),
    "strings": (None, strings_constraint("strings")),
    "short-strings": (None, strings_constraint("short-strings")),
}


@contextmanager
def observed() -> Iterator[list[bool]]:
    """Every refusal-rate observation made meanwhile (checked_greedy._observe's `refused`), in order."""
    seen: list[bool] = []
    original = checked_greedy._observe

    def observe(r: checked_greedy.CheckedRow, refused: bool) -> None:
        seen.append(refused)
        original(r, refused)

    with mock.patch.object(checked_greedy, "_observe", observe):
        yield seen


def one(runtime: ModelRuntime, grammars: Grammars, prompt: list[int], constraint: pb.Constraint,
        max_tokens: int) -> tuple[list[int], list[bool]]:
    """One greedy constrained request to its end: its tokens and the refusal observations of its steps."""
    request = GenerationRequest("r", prompt, SamplingParams(temperature=0.0), max_tokens=max_tokens,
                                constraint=grammars.constraint(constraint))
    with observed() as seen:
        events = run_to_completion(runtime, request, SchedulerOptions(prefill_chunk_size=512, pipelined=False))
    for event in events:
        if isinstance(event, ErrorEvent):
            raise event.error
    return [t for event in events if isinstance(event, TokenEvent) for t in event.token_ids], seen


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    common.add_model_args(p)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--max-whitespace", type=int, help="every case's whitespace bound (default: each case's own)")
    args = p.parse_args(argv)
    common.reexec_with_blas(__name__, argv)
    mx.set_default_stream(mx.new_stream(mx.default_device()))
    loaded, tokenizer = load_model_and_tokenizer(common.resolve_model(args.model), args.dtype)
    runtime = ModelRuntime.from_loaded(loaded, tokenizer)
    grammars = Grammars(tokenizer, runtime.vocab_size, sorted(runtime.eos_ids))
    lines, outputs = [], []
    for name in args.cases.split(","):
        messages, chosen = CASES[name]
        constraint = pb.Constraint()
        constraint.CopyFrom(chosen)
        if args.max_whitespace is not None:
            constraint.max_whitespace = args.max_whitespace
        prompt = (common.prompt_ids(runtime.vocab_size, 128) if messages is None else
                  tokenizer.encode(tokenizer.apply_chat_template(messages), add_special_tokens=False))
        tokens, seen = one(runtime, grammars, prompt, constraint, args.max_tokens)
        refusals = sum(seen)
        rate = refusals / len(seen) if seen else 0.0
        rows = checked_greedy.EXPECTED_REFUSALS / rate if rate else float("inf")
        lines.append([name, len(tokens), len(seen), refusals, rate, rows])
        outputs.append(f"{name}: {tokenizer.decode(tokens)[:100]!r}")
    print("\n".join(outputs))
    print(f"greedy, one request a case; rows checked together while their rates sum to at most "
          f"EXPECTED_REFUSALS ({checked_greedy.EXPECTED_REFUSALS}):")
    print(common.table(["case", "tokens", "checks", "refusals", "rate", "rows at the limit"], lines))


if __name__ == "__main__":
    main()
