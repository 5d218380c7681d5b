"""Size limits set on the command line give clear status codes, and the daemon keeps serving."""

import grpc
import pytest

from mlxd_client import Client, MlxdClientError
from tests.helpers.daemon_process import FIXTURES, start_daemon

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    daemon = start_daemon(FIXTURES / "parity" / "llama", "--max-message-mb", "1", "--max-prompt-tokens", "10",
                          workdir=tmp_path_factory.mktemp("limits"))
    yield daemon
    assert daemon.stop() == 0


def test_message_larger_than_the_limit(limited):
    with Client(limited.addr) as client:
        with pytest.raises(MlxdClientError) as info:
            client.complete("x" * (2 << 20), max_tokens=1)
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert client.health() == "SERVING"


def test_prompt_longer_than_max_prompt_tokens(limited):
    with Client(limited.addr) as client:
        with pytest.raises(MlxdClientError) as info:
            client.complete(tokens=[5] * 11, max_tokens=1)
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most 10" in info.value.details
        assert client.complete(tokens=[5] * 10, max_tokens=1).final.usage.prompt_tokens == 10
