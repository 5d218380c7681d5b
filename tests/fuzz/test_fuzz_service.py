"""Property: every request, however hostile, gets OK or a documented status (never INTERNAL or UNKNOWN, never a
hang), and the daemon stays SERVING. MLXD_FUZZ_EXAMPLES raises the example count (tests/stress/fuzz.py)."""

import os

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings

from mlxd_client import Client, MlxdClientError, pb
from tests.fuzz.hostile_requests import Call, any_call
from tests.fuzz.sending import fuzzed_daemon, run
from tests.helpers.daemon_process import FIXTURES

pytestmark = [pytest.mark.process, pytest.mark.stress]

LLAMA = FIXTURES / "parity" / "llama"
EXAMPLES = int(os.environ.get("MLXD_FUZZ_EXAMPLES", "200"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    flags = ("--max-message-mb", "1", "--max-queue", "4")
    with fuzzed_daemon(LLAMA, tmp_path_factory.mktemp("fuzz"), *flags) as pair:
        yield pair


@pytest.fixture(scope="module")
def daemon(served):
    return served[0]


@pytest.fixture(scope="module")
def channel(served):
    return served[1]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])
@given(call=any_call())
# What the fuzzer found, kept as regressions: a prompt with a lone surrogate (CESU-8 bytes) was INTERNAL from
# gRPC's deserializer; repetition_window = 2**32 - 1 was INTERNAL from an MLX slice index.
@example(call=Call("/mlxd.v1.Inference/Generate", b"\x12\x03\xed\xa0\x80", True))
@example(call=Call("/mlxd.v1.Inference/Generate",
                   pb.GenerateRequest(prompt="hi", options=pb.GenerationOptions(
                       max_tokens=3, repetition_penalty=1.5, repetition_window=2**32 - 1)).SerializeToString(), True))
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
