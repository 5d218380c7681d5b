"""Property: every request, however hostile, gets OK or a documented status (never INTERNAL or UNKNOWN, never a
hang), and the daemon stays SERVING. MLXD_FUZZ_EXAMPLES raises the example count (bench/fuzz.py)."""

import os

import grpc
import pytest
from hypothesis import HealthCheck, given, settings

from daemon_process import FIXTURES, start_daemon
from hostile_requests import Call, any_call
from mlxd_client import Client, MlxdClientError, pb

LLAMA = FIXTURES / "parity" / "llama"
EXAMPLES = int(os.environ.get("MLXD_FUZZ_EXAMPLES", "300"))
DEADLINE_SECONDS = 30.0   # far beyond any request here: reaching it means a hang
MAX_RESPONSES = 6         # then the stream is cancelled by the client, which is a path worth fuzzing too
DOCUMENTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
              grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = start_daemon(LLAMA, "--max-message-mb", "1", "--max-queue", "4",
                     workdir=tmp_path_factory.mktemp("fuzz"))
    yield d
    assert d.stop() == 0, d.stderr()
    assert "Traceback" not in d.stderr(), d.stderr()


@pytest.fixture(scope="module")
def channel(daemon):
    channel = grpc.insecure_channel(daemon.addr)
    yield channel
    channel.close()


def run(channel: grpc.Channel, call: Call) -> grpc.StatusCode | None:
    """Send call with raw bytes; its status code, or None when the client cancelled a stream that was healthy."""
    try:
        if not call.streaming:
            channel.unary_unary(call.method)(call.request, timeout=DEADLINE_SECONDS)
            return grpc.StatusCode.OK
        responses = channel.unary_stream(call.method)(call.request, timeout=DEADLINE_SECONDS)
        last = None
        for count, data in enumerate(responses, 1):
            last = pb.GenerateResponse.FromString(data)
            if count == MAX_RESPONSES and not last.HasField("final"):
                responses.cancel()
                return None
        assert last is not None and last.HasField("final"), f"the stream ended without a final message: {last}"
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        if error.code() not in DOCUMENTED:
            raise AssertionError(f"{error.code()}: {error.details()}") from None
        assert error.details(), "a failed request must say why"
        return error.code()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])
@given(call=any_call())
def test_every_request_gets_a_documented_status(daemon, channel, call):
    run(channel, call)
    with Client(daemon.addr) as client:
        assert client.health(timeout=5) == "SERVING"


def test_still_correct_after_the_fuzzing(daemon):
    from safetensors.numpy import load_file
    expected = load_file(str(LLAMA / "expected.safetensors"))
    with Client(daemon.addr) as client:
        result = client.complete(tokens=expected["input_ids"][0].tolist(), temperature=0.0, ignore_eos=True,
                                 max_tokens=16, timeout=30)
    assert result.token_ids == expected["greedy_ids"].tolist()


def test_duplicate_live_request_id_is_invalid_argument(daemon):
    with Client(daemon.addr) as client:
        first = client.generate(tokens=[5] * 4, request_id="dup", max_tokens=0, ignore_eos=True, timeout=30)
        assert next(first).HasField("chunk")
        with pytest.raises(MlxdClientError) as info:
            client.complete(tokens=[5], request_id="dup", max_tokens=1, timeout=30)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "dup" in info.value.details
        assert client.cancel("dup")
        finals = [r.final for r in first if r.HasField("final")]
        assert finals[0].finish_reason == pb.FINISH_REASON_CANCELLED
