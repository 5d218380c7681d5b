"""Prompts and outputs reach the daemon's log only with `mlxd serve --log-requests` (issue 7), errors included."""

import re

import grpc
import pytest

from mlxd.service.request_log import WITHHELD, describe_prompt, quoted, withheld_traceback
from mlxd_client import Client, MlxdClientError, pb
from tests.helpers.daemon_process import FIXTURES, start_daemon

pytestmark = pytest.mark.process

FAIL_TOKEN = 300
SECRET = "zebra-7f3a-secret"
# A prompt that tries to forge a log line of its own.
FORGED = "2026-01-01 00:00:00,000 ERROR mlxd: forged"
PROMPT = f"tell me about {SECRET}\n{FORGED}"


@pytest.fixture(scope="module", params=[False, True], ids=["default", "log-requests"])
def daemon(request, tmp_path_factory):
    flags = ["--log-requests"] if request.param else []
    d = start_daemon(FIXTURES / "parity" / "llama", *flags, workdir=tmp_path_factory.mktemp("log"),
                     faults=("--fail-on-token", str(FAIL_TOKEN)))
    d.logs_requests = request.param
    yield d
    assert d.stop() == 0, d.stderr()


def test_prompt_and_output(daemon):
    with Client(daemon.addr) as client:
        text = client.complete(PROMPT, request_id="req-text", max_tokens=24, temperature=0.0, ignore_eos=True)
        tokens = client.complete(tokens=[5, 6, 7], request_id="req-ids", max_tokens=3, temperature=0.0,
                                 ignore_eos=True)
        chat = client.complete(messages=[{"role": "user", "content": SECRET + "-chat"}], request_id="req-chat",
                               max_tokens=2, temperature=0.0)
    log = daemon.stderr()
    assert len(text.text) >= 8 and tokens.text
    if not daemon.logs_requests:
        assert SECRET not in log and repr(text.text)[1:-1] not in log and "mlxd.requests" not in log
        return
    assert (f"request 'req-text' Generate: {text.final.usage.prompt_tokens} prompt tokens, prompt {PROMPT!r}"
            in log)
    assert f"request 'req-text' done: finish length, {text.final.usage.prompt_tokens} prompt tokens (0 cached), " \
           f"24 generated; output {text.text!r}" in log
    assert not any(line.startswith(FORGED) for line in log.splitlines())
    assert "request 'req-ids' Generate: 3 prompt tokens, tokens [5, 6, 7]" in log
    assert f"request 'req-ids' done: finish length, 3 prompt tokens (0 cached), 3 generated; output " \
           f"{tokens.text!r}" in log
    assert f"request 'req-chat' Generate: {chat.final.usage.prompt_tokens} prompt tokens, chat (1 messages) " \
           f"'user: {SECRET}-chat'" in log


def test_refused_request(daemon):
    with Client(daemon.addr) as client, pytest.raises(MlxdClientError) as info:
        client.complete(PROMPT, request_id="req-refused", expected_model=SECRET + "-model", max_tokens=2)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION and SECRET in info.value.details
    log = daemon.stderr()
    if not daemon.logs_requests:
        assert SECRET not in log
        return
    assert f"request 'req-refused' Generate refused: FAILED_PRECONDITION {info.value.details!r}; " \
           f"prompt {PROMPT!r}" in log


def test_internal_error(daemon):
    with Client(daemon.addr) as client:
        with pytest.raises(MlxdClientError) as info:
            client.complete(tokens=[5, FAIL_TOKEN], request_id="req-fail", max_tokens=2)
        assert client.health() == "SERVING"
    assert info.value.code == grpc.StatusCode.INTERNAL and "injected fault" in info.value.details
    log = daemon.stderr()
    # The bug is logged with its traceback either way; its message (which could quote the request) only with
    # the flag.
    assert "Traceback (most recent call last)" in log and "fault_daemon.py" in log
    if not daemon.logs_requests:
        # (The source line that raises it is in the traceback; the message with its thread id is not.)
        assert not re.search(r"injected fault: token \d+ on thread \d+", log) and f"RuntimeError: {WITHHELD}" in log
        return
    assert "RuntimeError: injected fault" in log
    assert f"request 'req-fail' failed: INTERNAL {info.value.details!r}; output so far ''" in log


def test_withheld_traceback_keeps_frames_and_types_but_no_message():
    def fail():
        try:
            raise KeyError(SECRET)
        except KeyError as error:
            raise ValueError(f"bad prompt {SECRET!r}") from error
    try:
        fail()
    except ValueError as error:
        text = withheld_traceback(error)
    assert SECRET not in text
    assert text.count("Traceback (most recent call last):") == 2 and "in fail" in text
    assert f"KeyError: {WITHHELD}" in text and f"ValueError: {WITHHELD}" in text
    assert "The above exception was the direct cause of the following exception" in text


def test_quoting_escapes_and_truncates():
    assert quoted("a\nb\x1b[31m\u2028", 100) == "'a\\nb\\x1b[31m\\u2028'"
    assert quoted("x" * 12, 5) == "'xxxxx' (+7 more chars)"
    # Escapes count: a prompt of NULs does not make a line four times as long.
    assert quoted("\x00" * 1000, 100) == repr("\x00" * 23) + " (+977 more chars)"
    assert quoted("ab", 5, total_chars=9) == "'ab' (+7 more chars)"
    request = pb.MultimodalGenerateRequest()
    message = request.chat.messages.add(role="user")
    message.content.add(text="look:\n")
    message.content.add(image=pb.Image(data=b"\x89PNG" * 10))
    assert describe_prompt(request, 100) == "chat (1 messages) 'user: look:\\n<image: 40 bytes>'"
    tokens = pb.GenerateRequest(tokens=pb.TokenIds(ids=list(range(1000))))
    assert describe_prompt(tokens, 20) == "tokens [0, 1, 2, 3, 4, 5, 6... (1000 ids)"
