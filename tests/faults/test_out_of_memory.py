"""A forward pass that runs the device out of memory fails its requests with RESOURCE_EXHAUSTED saying so, not
INTERNAL: it is not a bug, and the daemon serves on (an H100 running three 8B daemons answered INTERNAL)."""

import grpc
import pytest

from mlxd_client import Client, MlxdClientError
from tests.helpers.daemon_process import FIXTURES, start_daemon

pytestmark = pytest.mark.process

FULL_TOKEN = 300


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    daemon = start_daemon(FIXTURES / "parity" / "llama", workdir=tmp_path_factory.mktemp("full"),
                          faults=("--oom-on-token", str(FULL_TOKEN)))
    yield daemon
    assert daemon.stop() == 0, daemon.stderr()


@pytest.mark.parametrize("where", ["prefill", "decode"])
def test_running_out_of_device_memory_is_resource_exhausted_and_the_daemon_serves_on(full, where):
    # In the prompt, or (the bias making it the first token generated) fed to the model by the next decode step.
    request = (dict(tokens=[5, FULL_TOKEN, 7], max_tokens=4) if where == "prefill" else
               dict(tokens=[5, 6], max_tokens=8, temperature=0.0, ignore_eos=True, logit_bias={FULL_TOKEN: 100.0}))
    with Client(full.addr) as client:
        with pytest.raises(MlxdClientError) as info:
            list(client.generate(timeout=30, **request))
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "ran out of memory" in info.value.details and "--kv-cache-mb" in info.value.details
        assert client.health() == "SERVING"
        result = client.complete(tokens=[5, 6, 7], max_tokens=4, temperature=0.0, ignore_eos=True, timeout=30)
        assert result.final.usage.completion_tokens == 4
    assert "the device ran out of memory" in full.stderr() and "Traceback" not in full.stderr()
