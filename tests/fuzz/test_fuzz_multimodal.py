"""Property: MultimodalGenerate on a vision-language model answers every image (real, truncated, bit-flipped,
a bomb's header, not an image at all) with OK or a documented status, and the daemon stays SERVING."""

import os

import pytest
from hypothesis import HealthCheck, given, settings

from mlxd_client import Client
from tests.fuzz.hostile_requests import multimodal_calls
from tests.fuzz.sending import fuzzed_daemon, run
from tests.helpers.daemon_process import FIXTURES

pytestmark = [pytest.mark.process, pytest.mark.stress]

GEMMA3 = FIXTURES / "parity" / "gemma3"
EXAMPLES = int(os.environ.get("MLXD_FUZZ_EXAMPLES", "100"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    flags = ("--max-message-mb", "1", "--max-images", "4", "--max-image-pixels", "1000000")
    with fuzzed_daemon(GEMMA3, tmp_path_factory.mktemp("fuzz-vlm"), *flags) as pair:
        yield pair


@pytest.fixture(scope="module")
def daemon(served):
    return served[0]


@pytest.fixture(scope="module")
def channel(served):
    return served[1]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])
@given(call=multimodal_calls())
def test_every_image_request_gets_a_documented_status(daemon, channel, call):
    run(channel, call)
    with Client(daemon.addr) as client:
        assert client.health(timeout=5) == "SERVING"
