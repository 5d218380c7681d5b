"""Property: MultimodalGenerate on a vision-language model answers every image (real, truncated, bit-flipped,
a bomb's header, not an image at all) with OK or a documented status, and the daemon stays SERVING."""

import os

import grpc
import pytest
from hypothesis import HealthCheck, given, settings

from daemon_process import FIXTURES, start_daemon
from hostile_requests import multimodal_calls
from mlxd_client import Client
from sending import run

GEMMA3 = FIXTURES / "parity" / "gemma3"
EXAMPLES = int(os.environ.get("MLXD_FUZZ_EXAMPLES", "100"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = start_daemon(GEMMA3, "--max-message-mb", "1", "--max-images", "4", "--max-image-pixels", "1000000",
                     workdir=tmp_path_factory.mktemp("fuzz-vlm"))
    yield d
    assert d.stop() == 0, d.stderr()
    assert "Traceback" not in d.stderr(), d.stderr()


@pytest.fixture(scope="module")
def channel(daemon):
    channel = grpc.insecure_channel(daemon.addr)
    yield channel
    channel.close()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])
@given(call=multimodal_calls())
def test_every_image_request_gets_a_documented_status(daemon, channel, call):
    run(channel, call)
    with Client(daemon.addr) as client:
        assert client.health(timeout=5) == "SERVING"
