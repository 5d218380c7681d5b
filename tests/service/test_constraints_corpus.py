"""Structured output on a real model: a corpus of JSON Schemas, regexes and llama.cpp-style GBNF grammars sent
through chat messages (SmolLM2's own chat template) to `mlxd serve` on SmolLM2-135M, greedy and seeded, all at
once beside unconstrained chats. Every output the daemon calls complete validates (jsonschema with its format
checker, a full regex match, a parse); every other one was cut by max_tokens; and where the unconstrained greedy
output already satisfies a regex, the constrained greedy request gives the same tokens."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest

from mlxd_client import Client, pb
from tests.constraints.test_walks import GBNF_ARITHMETIC, GBNF_JSON, GBNF_LIST, _arithmetic
from tests.helpers.daemon_process import start_daemon

pytestmark = [pytest.mark.real_model, pytest.mark.process]

SHORT_TEXT = {"type": "string", "minLength": 1, "maxLength": 24}

# name -> (what the user asks for, the schema). Strings are bounded (blanks inside a string are content, so an
# unbounded one can run to max_tokens), which is how a host that wants a complete answer writes its schema.
CORPUS: dict[str, tuple[str, dict]] = {
    "person_with_address": ("Describe a fictional person with their name, age and address.", {
        "type": "object",
        "properties": {
            "name": SHORT_TEXT,
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "address": {"type": "object", "properties": {
                "street": SHORT_TEXT, "city": SHORT_TEXT, "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            }, "required": ["street", "city", "zip"], "additionalProperties": False},
        },
        "required": ["name", "age", "address"],
        "additionalProperties": False,
    }),
    "product_with_tags": ("Describe a product in a shop: its SKU, price, stock and a few tags.", {
        "type": "object",
        "properties": {
            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
            "price": {"type": "number", "minimum": 0, "maximum": 10000},
            "in_stock": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 12},
                     "minItems": 1, "maxItems": 3},
        },
        "required": ["sku", "price", "in_stock", "tags"],
        "additionalProperties": False,
    }),
    "weather_enums": ("Report today's weather in Paris.", {
        "type": "object",
        "properties": {
            "condition": {"enum": ["sunny", "cloudy", "rainy", "snowy", "windy"]},
            "temperature_c": {"type": "number", "minimum": -50, "maximum": 60},
            "wind": {"type": "string", "enum": ["none", "light", "strong"]},
        },
        "required": ["condition", "temperature_c", "wind"],
        "additionalProperties": False,
    }),
    "contact_any_of": ("Give the contact of a support team: an email address or a phone number.", {
        "type": "object",
        "properties": {
            "team": SHORT_TEXT,
            "contact": {"anyOf": [
                {"type": "string", "format": "email", "maxLength": 40},
                {"type": "string", "pattern": "^\\+?[0-9]{7,12}$"},
                {"type": "object", "properties": {"phone": {"type": "string", "pattern": "^[0-9]{7,12}$"}},
                 "required": ["phone"], "additionalProperties": False},
            ]},
        },
        "required": ["team", "contact"],
        "additionalProperties": False,
    }),
    "order_refs": ("Write an order: the customer and one to three line items with quantities.", {
        "type": "object",
        "$defs": {
            "customer": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99999},
                                                          "name": SHORT_TEXT},
                         "required": ["id", "name"], "additionalProperties": False},
            "item": {"type": "object", "properties": {"product": SHORT_TEXT,
                                                      "quantity": {"type": "integer", "minimum": 1, "maximum": 20}},
                     "required": ["product", "quantity"], "additionalProperties": False},
        },
        "properties": {
            "customer": {"$ref": "#/$defs/customer"},
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 1, "maxItems": 3},
        },
        "required": ["customer", "items"],
        "additionalProperties": False,
    }),
    "server_formats": ("Describe a server: its IPv4 address, its UUID and the admin's email address.", {
        "type": "object",
        "properties": {
            "ip": {"type": "string", "format": "ipv4"},
            "id": {"type": "string", "format": "uuid"},
            "admin": {"type": "string", "format": "email", "maxLength": 40},
        },
        "required": ["ip", "id", "admin"],
        "additionalProperties": False,
    }),
    "color_ranges": ("Give an orange colour as RGB with an opacity between 0 and 1.", {
        "type": "object",
        "properties": {
            "r": {"type": "integer", "minimum": 0, "maximum": 255},
            "g": {"type": "integer", "minimum": 0, "maximum": 255},
            "b": {"type": "integer", "minimum": 0, "maximum": 255},
            "alpha": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["r", "g", "b", "alpha"],
        "additionalProperties": False,
    }),
    "book_optional_fields": ("Describe a famous novel.", {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": 40},
            "author": {"type": "string", "minLength": 1, "maxLength": 30},
            "year": {"type": "integer", "minimum": 1400, "maximum": 2030},
            "isbn": {"type": "string", "pattern": "^[0-9]{13}$"},
        },
        "required": ["title", "author"],
        "additionalProperties": False,
    }),
    "scores_array": ("List two to four players with their scores out of 100.", {
        "type": "array",
        "items": {"type": "object", "properties": {"player": SHORT_TEXT,
                                                   "score": {"type": "integer", "minimum": 0, "maximum": 100}},
                  "required": ["player", "score"], "additionalProperties": False},
        "minItems": 2,
        "maxItems": 4,
    }),
    "company_nested": ("Describe a small company with up to two departments and their staff.", {
        "type": "object",
        "properties": {
            "company": SHORT_TEXT,
            "departments": {"type": "array", "maxItems": 2, "items": {
                "type": "object",
                "properties": {
                    "name": SHORT_TEXT,
                    "staff": {"type": "array", "maxItems": 2, "items": {
                        "type": "object", "properties": {"first": SHORT_TEXT, "last": SHORT_TEXT},
                        "required": ["first", "last"], "additionalProperties": False}},
                },
                "required": ["name", "staff"], "additionalProperties": False}},
        },
        "required": ["company", "departments"],
        "additionalProperties": False,
    }),
    "event_tagged_union": ("Log one user-interface event: a mouse click with its position or a key press.", {
        "anyOf": [
            {"type": "object", "properties": {"kind": {"const": "click"},
                                              "x": {"type": "integer", "minimum": 0, "maximum": 1920},
                                              "y": {"type": "integer", "minimum": 0, "maximum": 1080}},
             "required": ["kind", "x", "y"], "additionalProperties": False},
            {"type": "object", "properties": {"kind": {"const": "key"},
                                              "key": {"type": "string", "minLength": 1, "maxLength": 1}},
             "required": ["kind", "key"], "additionalProperties": False},
        ],
    }),
    "settings_nullable": ("Give a user's display settings.", {
        "type": "object",
        "properties": {
            "dark_mode": {"type": "boolean"},
            "font_size": {"type": "integer", "minimum": 8, "maximum": 32},
            "nickname": {"type": ["string", "null"], "maxLength": 16},
            "zoom": {"type": "number", "exclusiveMinimum": 0.5, "exclusiveMaximum": 3},
        },
        "required": ["dark_mode", "font_size", "nickname"],
        "additionalProperties": False,
    }),
}
# Greedy, and two seeds at temperature 1: sampling reaches the schema's corners that greedy never tries.
SAMPLINGS = [dict(temperature=0.0), dict(temperature=1.0, seed=1), dict(temperature=1.0, seed=2)]
# A corpus answer is 20-100 tokens in SmolLM2's pretty-printed style; this leaves room for a long one.
SCHEMA_MAX_TOKENS = 160
PATTERN_MAX_TOKENS = 64
FREE_MAX_TOKENS = 40
FREE_QUESTIONS = ["Write one sentence about the sea.", "What is the capital of Italy?", "Name three fruits.",
                  "Say hello in French."]
SYSTEM = "You are a helpful assistant. Answer with JSON only."


# A regex and llama.cpp's grammars/ (list.gbnf and json.gbnf as they are; arithmetic without the trailing ws that
# llguidance's greedy lexer mishandles, see tests/constraints/test_walks.py), asked as a host would ask them.
REGEX_PHONE = r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}"
REGEX_ANSWER = r"(Yes|No)\. [A-Z][a-z ,']{4,60}\."
LIST_LINE = re.compile(r"- [^\r\n\x0b\x0c\x85\u2028\u2029]+\n")


def is_json_object(text: str) -> bool:
    return isinstance(json.loads(text), dict)


def whole_lines(text: str) -> str:
    return text[:text.rfind("\n") + 1]


def all_lines_match(pattern: re.Pattern) -> Callable[[str], bool]:
    return lambda text: bool(text) and all(pattern.fullmatch(line) for line in text.splitlines(keepends=True))


# (question, constraint, what a complete output satisfies, what an output cut by max_tokens satisfies). The
# regexes are bounded: a cut one is an error. SmolLM2 never ends a list of equations with EOS (each line is followed
# by another), so arithmetic outputs run to max_tokens and their whole lines are checked instead.
PATTERNED: list[tuple[str, pb.Constraint, Callable[[str], object], Callable[[str], object] | None]] = [
    ("Give an example of a US phone number.", pb.Constraint(regex=REGEX_PHONE),
     lambda text: re.fullmatch(REGEX_PHONE, text), None),
    ("Is the sky blue? Answer yes or no, then say why in a few words.", pb.Constraint(regex=REGEX_ANSWER),
     lambda text: re.fullmatch(REGEX_ANSWER, text), None),
    ("List three fruits.", pb.Constraint(gbnf=GBNF_LIST), all_lines_match(LIST_LINE),
     lambda text: all_lines_match(LIST_LINE)(whole_lines(text))),
    ("Give a JSON object with a cat's name and age.", pb.Constraint(gbnf=GBNF_JSON), is_json_object,
     lambda text: text.startswith("{")),
    ("What is 12 + 30? Answer with the equation.", pb.Constraint(gbnf=GBNF_ARITHMETIC), _arithmetic,
     lambda text: _arithmetic(whole_lines(text))),
]


@pytest.fixture(scope="module")
def smollm2_daemon(tmp_path_factory):
    from mlxd.demo_models import fetch_model
    # Room for every request of `batch` in one batch: waves one after another would multiply the file's runtime.
    daemon = start_daemon(fetch_model("smollm2"), "--max-batch-size", "64",
                          workdir=tmp_path_factory.mktemp("smollm2"))
    yield daemon
    assert daemon.stop() == 0, daemon.stderr()
    assert "Traceback" not in daemon.stderr(), daemon.stderr()


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def user(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def free_request(question: str) -> dict:
    return dict(messages=user(question), max_tokens=FREE_MAX_TOKENS, temperature=0.0)


def run_all(addr: str, requests: list[dict]) -> list:
    """Send every request at once (one thread each, so the daemon batches them) and return their completions."""
    def send(kwargs: dict):
        with Client(addr) as client:
            return client.complete(timeout=600, **kwargs)

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(send, requests))


class Batch:
    """Every corpus schema, regex and grammar request, greedy and seeded, sent at once with unconstrained chats
    among them; `free_alone` holds those chats' completions when they ran by themselves before."""

    def __init__(self, daemon) -> None:
        self.free_alone = run_all(daemon.addr, [free_request(question) for question in FREE_QUESTIONS])
        self.schema_cases = [(name, sampling) for name in CORPUS for sampling in SAMPLINGS]
        self.pattern_cases = [(entry, sampling) for entry in PATTERNED for sampling in SAMPLINGS]
        constrained = [dict(messages=chat(CORPUS[name][0]), max_tokens=SCHEMA_MAX_TOKENS, **sampling,
                            constraint=pb.Constraint(json_schema=json.dumps(CORPUS[name][1])))
                       for name, sampling in self.schema_cases]
        constrained += [dict(messages=user(question), max_tokens=PATTERN_MAX_TOKENS, constraint=constraint,
                             **sampling) for (question, constraint, _, _), sampling in self.pattern_cases]
        # The free chats spread among the constrained requests, so that they join the same decode steps.
        requests = list(constrained)
        spacing = len(constrained) // len(FREE_QUESTIONS)
        free_positions = [i * (spacing + 1) for i in range(len(FREE_QUESTIONS))]
        for position, question in zip(free_positions, FREE_QUESTIONS):
            requests.insert(position, free_request(question))
        results = run_all(daemon.addr, requests)
        self.free = [results[position] for position in free_positions]
        constrained_results = [r for i, r in enumerate(results) if i not in free_positions]
        self.schema_results = constrained_results[:len(self.schema_cases)]
        self.pattern_results = constrained_results[len(self.schema_cases):]


@pytest.fixture(scope="module")
def batch(smollm2_daemon):
    return Batch(smollm2_daemon)


def schema_validator(schema: dict) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_every_complete_schema_output_validates(batch):
    complete, problems = 0, []
    for (name, sampling), result in zip(batch.schema_cases, batch.schema_results):
        final = result.final
        if final.constraint_complete:
            assert final.finish_reason == pb.FINISH_REASON_STOP, (name, sampling, final)
            try:
                schema_validator(CORPUS[name][1]).validate(json.loads(result.text))
            except (ValueError, jsonschema.ValidationError) as error:
                problems.append(f"{name} {sampling}: {error}\n{result.text}")
            complete += 1
        else:
            # Only max_tokens may cut a constrained request short.
            assert final.finish_reason == pb.FINISH_REASON_LENGTH, (name, sampling, final)
            assert len(result.token_ids) == SCHEMA_MAX_TOKENS
    assert not problems, "\n\n".join(problems)
    total = len(batch.schema_cases)
    print(f"{complete} of {total} schema outputs complete, all valid")
    assert complete >= 0.8 * total, f"only {complete} of {total} completed within {SCHEMA_MAX_TOKENS} tokens"


def test_regex_and_gbnf_outputs_match(batch):
    complete = expected_to_complete = 0
    for ((question, constraint, complete_check, cut_check), sampling), result in zip(batch.pattern_cases,
                                                                                       batch.pattern_results):
        label = (constraint.WhichOneof("kind"), question, sampling, result.text)
        expected_to_complete += constraint.gbnf != GBNF_ARITHMETIC
        if result.final.constraint_complete:
            assert result.final.finish_reason == pb.FINISH_REASON_STOP, label
            assert complete_check(result.text), label
            complete += 1
        else:
            assert result.final.finish_reason == pb.FINISH_REASON_LENGTH, label
            assert cut_check is not None and cut_check(result.text), label
    print(f"{complete} of {len(batch.pattern_cases)} regex and GBNF outputs complete, all matching")
    assert complete >= 0.8 * expected_to_complete, f"{complete} of {expected_to_complete} complete"


def test_unconstrained_chats_beside_constrained_ones_are_unchanged(batch):
    for question, alone, beside in zip(FREE_QUESTIONS, batch.free_alone, batch.free):
        assert beside.final.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH) and beside.token_ids
        assert not beside.final.constraint_complete, "an unconstrained request has no constraint to complete"
        assert beside.token_ids == alone.token_ids, question


def literal_regex(text: str) -> str:
    """A regex matching exactly `text` (printable ASCII and newlines), in llguidance's (Rust's) syntax."""
    return "".join("\\n" if char == "\n" else "\\" + char if char in "\\.+*?()|[]{}^$#&-~" else char
                   for char in text)


def test_a_constraint_the_greedy_output_satisfies_changes_no_token(smollm2_daemon):
    # Each step's mask allows the token greedy chose unconstrained (the output satisfies the constraint, so every
    # prefix of it is allowed), and only removes others: greedy picks the same token again, EOS included.
    messages = user("What is the capital of France? Answer in one sentence.")
    with Client(smollm2_daemon.addr) as client:
        free = client.complete(messages=messages, temperature=0.0, max_tokens=60)
        # The literal regex is built from the text, so the text must say plainly what the tokens were: printable
        # ASCII (no byte pieces of a character split across tokens), and a whole answer that ended with EOS.
        assert free.final.finish_reason == pb.FINISH_REASON_STOP, free.text
        assert free.token_ids[-1] == free.final.stop_token_id, free.final
        assert free.text and all(char == "\n" or " " <= char <= "~" for char in free.text), free.text
        loose = "[" + literal_regex("".join(sorted(set(free.text)))) + "]+"
        # After the literal text nothing may follow, and the daemon then ends the request (STOP) without a step
        # that could only sample EOS: the EOS the free request sampled is not generated. Under the loose regex
        # more could follow, so the model's own EOS ends it as before.
        for regex, tokens, stop_token_id in ((literal_regex(free.text), free.token_ids[:-1], -1),
                                             (loose, free.token_ids, free.final.stop_token_id)):
            constrained = client.complete(messages=messages, temperature=0.0, max_tokens=60,
                                          constraint=pb.Constraint(regex=regex))
            assert constrained.token_ids == tokens, (regex, free.text, constrained.text)
            assert constrained.text == free.text
            assert constrained.final.constraint_complete and constrained.final.finish_reason == pb.FINISH_REASON_STOP
            assert constrained.final.stop_token_id == stop_token_id
