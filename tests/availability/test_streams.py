"""Issue 15 items 1 and 2 against a real daemon: streams waiting on their client hold no thread, health is
answered whatever they do, and the output of a client that stops reading is bounded."""

import time

import grpc
import pytest

from mlxd_client import Client, MlxdClientError, pb
from tests.availability.attacks import concurrent_calls, header_only_streams, health_latencies, undeliverable_streams
from tests.helpers.daemon_process import FIXTURES, resident_bytes, start_daemon

pytestmark = [pytest.mark.process, pytest.mark.stress]

LLAMA = FIXTURES / "parity" / "llama"
TOKEN = "s3cret-token-0123456789abcdef"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    # The queue and batch sizes are the defaults (64 + 16 live requests); the sync server had 96 threads.
    d = start_daemon(LLAMA, "--stalled-stream-seconds", "2", "--max-stream-backlog", "16",
                     workdir=tmp_path_factory.mktemp("streams"))
    yield d
    assert d.stop() == 0, d.stderr()


@pytest.fixture(scope="module")
def private(tmp_path_factory):
    folder = tmp_path_factory.mktemp("streams-auth")
    token = folder / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    d = start_daemon(LLAMA, "--auth-token-file", str(token), workdir=folder)
    yield d
    assert d.stop() == 0, d.stderr()


def _serves_everyone(addr: str, token: str | None = None) -> None:
    """Health, a unary call and a generation all answer (each within a deadline: a hang fails)."""
    health_latencies(addr, 10, token=token)
    with Client(addr, token=token) as client:
        assert client.stub.Tokenize(pb.TokenizeRequest(text="hello"), timeout=10).ids
        result = client.complete(tokens=[5, 6], max_tokens=4, ignore_eos=True, timeout=30)
        assert result.final.usage.completion_tokens == 4


def test_header_only_streams_without_the_token_are_refused_before_their_body(private):
    with header_only_streams(private.addr, 120) as streams:
        for conn in {conn for conn, _ in streams}:
            conn.read(0.5)
        # Answered UNAUTHENTICATED (16) on their headers alone: their message was never sent.
        assert {conn.status(stream) for conn, stream in streams} == {"16"}
        _serves_everyone(private.addr, TOKEN)


def test_header_only_streams_hold_no_thread(daemon):
    with header_only_streams(daemon.addr, 120):
        _serves_everyone(daemon.addr)


def test_two_waves_of_streams_whose_replies_cannot_be_delivered(daemon):
    for wave in range(2):
        with undeliverable_streams(daemon.addr, 80, max_tokens=16, prefix=f"wave{wave}"):
            health_latencies(daemon.addr, 10)
            with Client(daemon.addr) as client:
                assert client.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).vocab_size == 320
                # The 80 fill the queue until they finish: a newcomer is served or told RESOURCE_EXHAUSTED, at once.
                deadline = time.monotonic() + 60
                while True:
                    try:
                        result = client.complete(tokens=[5, 6], max_tokens=4, ignore_eos=True, timeout=30)
                        break
                    except MlxdClientError as error:
                        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
                        time.sleep(0.2)
                assert result.final.usage.completion_tokens == 4


def test_clients_that_stop_reading_are_bounded_and_cancelled(daemon):
    before = resident_bytes(daemon.proc.pid)
    with undeliverable_streams(daemon.addr, 80, max_tokens=0, prefix="unread"):
        with Client(daemon.addr) as client:
            # Each generates until 4 x --max-stream-backlog events wait untaken, or until a message waited
            # --stalled-stream-seconds for its client; then it is cancelled and let go.
            deadline = time.monotonic() + 60
            while any(client.cancel(f"unread-{i}") for i in range(80)):
                assert time.monotonic() < deadline, "streams nobody reads are still held"
                time.sleep(0.5)
        grew = resident_bytes(daemon.proc.pid) - before
    assert grew < 200 << 20, f"the resident set grew by {grew >> 20} MB"   # the sync server: ~800 MB
    log = daemon.stderr()
    ended = log.count("the client stopped reading, so it is cancelled") + log.count("for its client; the call is ended")
    assert ended >= 80, ended
    _serves_everyone(daemon.addr)


def test_many_clients_at_once_are_all_served(daemon):
    # 120 concurrent ordinary streams: more than the sync server had threads; queue-full answers are allowed.
    results = concurrent_calls(daemon.addr, 120, lambda client, i: client.complete(
        tokens=[5, 6 + i % 200], max_tokens=8, ignore_eos=True, timeout=120))
    served = [r for r in results if not isinstance(r, MlxdClientError)]
    refused = [r for r in results if isinstance(r, MlxdClientError)]
    assert {r.code for r in refused} <= {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert len(served) >= 80 and all(r.final.usage.completion_tokens == 8 for r in served)
