"""An exception inside the model's forward pass fails that request with INTERNAL; the worker thread goes on."""

import re

import grpc
import pytest

from mlxd.service.request_log import WITHHELD
from mlxd_client import Client, MlxdClientError
from tests.helpers.daemon_process import FIXTURES, start_daemon

pytestmark = pytest.mark.process

FAIL_TOKEN = 300


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    daemon = start_daemon(FIXTURES / "parity" / "llama", workdir=tmp_path_factory.mktemp("faulty"),
                          faults=("--fail-on-token", str(FAIL_TOKEN)))
    yield daemon
    assert daemon.stop() == 0, daemon.stderr()


def _internal(client: Client, **request) -> tuple[list, str]:
    """Run a generation that must fail with INTERNAL; the chunks it streamed first and the worker's thread id."""
    chunks = []
    with pytest.raises(MlxdClientError) as info:
        for response in client.generate(timeout=30, **request):
            chunks.append(response.chunk)
    assert info.value.code == grpc.StatusCode.INTERNAL
    match = re.search(rf"injected fault: token {FAIL_TOKEN} on thread (\d+)", info.value.details)
    assert match, info.value.details
    return chunks, match.group(1)


def _healthy(client: Client) -> None:
    assert client.health() == "SERVING"
    result = client.complete(tokens=[5, 6, 7], max_tokens=4, temperature=0.0, ignore_eos=True, timeout=30)
    assert result.final.usage.completion_tokens == 4 and FAIL_TOKEN not in result.token_ids


def test_failure_in_prefill_ends_only_that_request(faulty):
    with Client(faulty.addr) as client:
        chunks, thread = _internal(client, tokens=[5, FAIL_TOKEN, 7], max_tokens=4)
        assert chunks == []
        _healthy(client)
        # The model fails again on the same thread: the worker was not replaced, it went on.
        assert _internal(client, tokens=[FAIL_TOKEN], max_tokens=1)[1] == thread
        _healthy(client)
    # Logged with its traceback; the message only with --log-requests (tests/security/test_request_log.py).
    assert "Traceback" in faulty.stderr() and f"RuntimeError: {WITHHELD}" in faulty.stderr()


def test_failure_in_a_decode_step(faulty):
    with Client(faulty.addr) as client:
        # The prompt is clean; the bias makes the fault token the first one generated, and the next decode step
        # feeds it to the model.
        _internal(client, tokens=[5, 6], max_tokens=8, temperature=0.0, ignore_eos=True,
                  logit_bias={FAIL_TOKEN: 100.0})
        _healthy(client)
