"""Issue 15 item 3 against a real daemon: sizes are checked before expensive work, and preparing big requests
(tokenizing, stop strings) neither freezes health nor stops the streams already running."""

import grpc
import pytest

from mlxd_client import Client, pb
from tests.availability.attacks import concurrent_calls, health_latencies, heavy_stop_strings, watched_stream
from tests.helpers.daemon_process import FIXTURES, start_daemon

pytestmark = pytest.mark.process

LLAMA = FIXTURES / "parity" / "llama"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = start_daemon(LLAMA, "--max-queue", "32", workdir=tmp_path_factory.mktemp("preparation"))
    yield d
    assert d.stop() == 0, d.stderr()


def _failure(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def _generate(client: Client, **fields):
    options = fields.pop("options", pb.GenerationOptions(max_tokens=1))
    return list(client.stub.Generate(pb.GenerateRequest(options=options, **fields), timeout=30))


def test_a_prompt_too_long_to_fit_is_refused_before_it_is_tokenized(daemon):
    # 10 MB of text took ~34 s to tokenize (holding the GIL: every stream and health stood still).
    with Client(daemon.addr) as client:
        code, details = _failure(lambda: _generate(client, prompt="hello world " * 900_000))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "10800000 characters" in details, details
        code, details = _failure(lambda: client.stub.Tokenize(pb.TokenizeRequest(text="x" * 10_000_000), timeout=30))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "characters" in details, details
        health_latencies(daemon.addr, 5)


def test_counts_are_checked_before_the_elements(daemon):
    with Client(daemon.addr) as client:
        code, details = _failure(lambda: _generate(client, tokens=pb.TokenIds(ids=[7] * 100_000)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "tokens.ids has 100000 tokens" in details, details
        bias = pb.GenerationOptions(max_tokens=1)
        bias.logit_bias.update({i: 1.0 for i in range(100_000)})
        code, details = _failure(lambda: _generate(client, prompt="hi", options=bias))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "logit_bias has 100000 entries" in details, details
        chat = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="x")] * 5000)
        code, details = _failure(lambda: _generate(client, chat=chat))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "5000 messages" in details, details
        code, details = _failure(lambda: client.stub.Detokenize(pb.DetokenizeRequest(ids=[7] * 100_000), timeout=30))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "100000 ids" in details, details


def test_big_preparations_do_not_stop_health_or_running_streams(daemon):
    stops = heavy_stop_strings()   # 256 x 1,024 characters: the largest automaton the limits allow
    with watched_stream(daemon.addr) as stream:
        results = concurrent_calls(daemon.addr, 16, lambda client, i: client.complete(
            tokens=[5, 6], max_tokens=2, stop=stops, timeout=120))
        health_latencies(daemon.addr, 10)
        before = stream.tokens
        health_latencies(daemon.addr, 10)
    assert all(r.final.usage.completion_tokens <= 2 for r in results), results
    assert stream.error is None and stream.tokens > before   # the running stream kept going
