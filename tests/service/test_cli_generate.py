"""`mlxd generate` against the served tiny llama: a plain stream, and the constraint options."""

import json
import re
import subprocess
import sys

import pytest

from tests.helpers.daemon_process import daemon_env

pytestmark = pytest.mark.process


def generate(daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlxd", "generate", "--addr", daemon.addr, "--temperature", "0",
                           *args], capture_output=True, text=True, env=daemon_env(), timeout=60)


def test_a_plain_stream_and_its_summary(daemon):
    done = generate(daemon, "hello", "--max-tokens", "5")
    assert done.returncode == 0 and "5 generated tokens" in done.stderr and "constraint" not in done.stderr


@pytest.mark.parametrize("args,check", [
    (["--regex", "(cat|dog)-[0-9]{2}"], lambda text: re.fullmatch("(cat|dog)-[0-9]{2}", text)),
    (["--gbnf", 'root ::= "yes" | "no"'], lambda text: text in ("yes", "no")),
    (["--json-schema", json.dumps({"type": "object", "properties": {"n": {"enum": [1, 2]}}, "required": ["n"],
                                   "additionalProperties": False})], lambda text: json.loads(text)["n"] in (1, 2)),
])
def test_constraint_options(daemon, args, check):
    done = generate(daemon, "hello", "--max-tokens", "40", *args)
    assert done.returncode == 0, done.stderr
    assert check(done.stdout.rstrip("\n")) and "constraint complete" in done.stderr, (done.stdout, done.stderr)


def test_a_schema_from_a_file_and_after_without_a_constraint(daemon, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                                  "additionalProperties": False}))
    done = generate(daemon, "hello", "--max-tokens", "40", "--json-schema", f"@{schema}")
    assert isinstance(json.loads(done.stdout)["ok"], bool), done.stdout
    refused = generate(daemon, "hello", "--after", "</think>")
    assert refused.returncode != 0 and "--after needs a constraint" in refused.stderr
    bad = generate(daemon, "hello", "--regex", "(unclosed")
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr
