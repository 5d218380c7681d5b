"""Speculative decoding over gRPC on a real model (SmolLM2-135M, `mlxd serve --speculate ngram`): requests that
draft give exactly the tokens and text of the same requests with speculation turned off (GenerationOptions
.speculation = 0), greedy and seeded, several at once, with stop strings and max_tokens that end inside copied
runs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from mlxd_client import Client
from tests.helpers.daemon_process import start_daemon

pytestmark = [pytest.mark.real_model, pytest.mark.process]

PARAGRAPH = ("The old lighthouse stood at the edge of the cliff, its white paint peeling in long strips. Every "
             "evening the keeper climbed the ninety steps to light the lamp, and every morning he wrote the "
             "weather in a small green notebook.")
PROMPTS = [
    f"Rewrite the paragraph, changing 'keeper' to 'guardian'.\n\nParagraph: {PARAGRAPH}\n\nRewritten:",
    f"Text: {PARAGRAPH}\n\nFill this JSON record from the text: {{\"building\": \"\", \"steps\": 0, "
    "\"notebook_color\": \"\"}}\nJSON:",
    "Once upon a time, in a small village by the sea,",
    f"Repeat exactly: {PARAGRAPH}\nRepeated:",
]
SETTINGS = [dict(temperature=0.0), dict(temperature=0.8, top_p=0.95, seed=5), dict(temperature=0.0,
            repetition_penalty=1.1), dict(temperature=0.0, stop=["green"]), dict(temperature=0.0, max_tokens=23)]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    from mlxd.demo_models import fetch_model
    d = start_daemon(fetch_model("smollm2"), "--speculate", "ngram", "--speculate-fixed", "--speculate-depth", "5",
                     "--max-batch-size", "8", workdir=tmp_path_factory.mktemp("smollm2-spec"))
    yield d
    assert d.stop() == 0, d.stderr()
    assert "Traceback" not in d.stderr(), d.stderr()


def _complete(addr: str, prompt: str, settings: dict, speculation: int | None):
    options = {"max_tokens": 60, "ignore_eos": True, **settings}
    with Client(addr) as client:
        done = client.complete(prompt, speculation=speculation, logprobs=True, **options)
    return list(done.token_ids), done.text, done.final.finish_reason, done.final.usage.completion_tokens


def test_speculative_requests_yield_the_plain_output(daemon):
    cases = [(p, s) for p in PROMPTS for s in SETTINGS]
    with ThreadPoolExecutor(8) as pool:  # several at once: they share verify steps
        speculative = list(pool.map(lambda c: _complete(daemon.addr, *c, None), cases))
        plain = list(pool.map(lambda c: _complete(daemon.addr, *c, 0), cases))
    for case, got, want in zip(cases, speculative, plain):
        assert got == want, case


def test_smollm2_as_its_own_draft_model_is_accepted_throughout(tmp_path):
    """`--draft-model` with the target itself: greedy drafts are all accepted; the output is the plain one."""
    from mlxd.demo_models import fetch_model
    model = fetch_model("smollm2")
    d = start_daemon(model, "--draft-model", str(model), "--speculate-fixed", "--speculate-depth", "4",
                     workdir=tmp_path)
    try:
        with Client(d.addr) as client:
            for prompt in PROMPTS[:2]:
                options = dict(max_tokens=40, ignore_eos=True, temperature=0.0)
                drafted = client.complete(prompt, **options)
                plain = client.complete(prompt, speculation=0, **options)
                assert list(drafted.token_ids) == list(plain.token_ids) and drafted.text == plain.text
                usage = drafted.final.usage
                assert usage.accepted_draft_tokens == usage.drafted_tokens > 20
    finally:
        assert d.stop() == 0, d.stderr()


RECORD_SCHEMA = {"type": "object", "properties": {"building": {"type": "string", "maxLength": 40},
                                                  "steps": {"type": "integer"},
                                                  "notebook_color": {"type": "string", "maxLength": 20}},
                 "required": ["building", "steps", "notebook_color"], "additionalProperties": False}


@pytest.mark.parametrize("after", ["", "{"])
@pytest.mark.parametrize("settings", [dict(temperature=0.0), dict(temperature=0.8, seed=3)])
def test_constrained_requests_draft_and_yield_the_plain_output(daemon, settings, after):
    """A JSON Schema constraint with prompt lookup: the record's keys are copied from the prompt, so drafts are
    accepted, each cut where the grammar refuses it; tokens, text and completeness are the plain request's. With
    `after`, the output is free up to the marker (SmolLM2 writes "{" at once) and the record follows it, so
    drafts run across the border between the free part and the constrained one."""
    import json

    from mlxd_client import pb

    constraint = pb.Constraint(json_schema=json.dumps(RECORD_SCHEMA), max_whitespace=1, after=after)

    def complete(speculation):
        with Client(daemon.addr) as client:
            return client.complete(PROMPTS[1], speculation=speculation, max_tokens=80,
                                   constraint=constraint, **settings)

    got, want = complete(None), complete(0)
    assert list(got.token_ids) == list(want.token_ids) and got.text == want.text
    assert got.final.constraint_complete == want.final.constraint_complete
    assert got.final.usage.accepted_draft_tokens > 0
    if got.final.constraint_complete:
        json.loads(got.text.split(after, 1)[1] if after else got.text)
