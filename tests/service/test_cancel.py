"""Cancellation: client cancel, Cancel RPC (running and queued), queue limits."""

import threading
import time

import grpc
import pytest

from mlxd_client import Client, MlxdClientError, pb
from tests.helpers.daemon_process import FIXTURES, start_daemon

pytestmark = pytest.mark.process

LONG = dict(tokens=[5] * 8, max_tokens=2000, ignore_eos=True, temperature=0.0)


def test_client_cancel_mid_stream_frees_the_worker(client, expected):
    stream = client.generate(**LONG)
    for _, response in zip(range(3), stream):
        assert response.HasField("chunk")
    stream.close()  # the client goes away mid-stream
    started = time.monotonic()
    ids = expected["input_ids"][0].tolist()
    result = client.complete(tokens=ids, temperature=0.0, ignore_eos=True, max_tokens=16)
    # The next request is served at once (a 2000-token generation was not finished first)...
    assert result.final.timings.queue_seconds < 1.0, time.monotonic() - started
    # ...and behaves as if the cancelled one never ran.
    assert result.token_ids == expected["greedy_ids"].tolist()


def test_cancel_rpc_ends_the_stream_with_cancelled(client):
    stream = client.generate(request_id="to-cancel", **LONG)
    assert next(stream).HasField("chunk")
    assert client.cancel("to-cancel") is True
    finals = [r.final for r in stream if r.HasField("final")]
    assert len(finals) == 1 and finals[0].finish_reason == pb.FINISH_REASON_CANCELLED
    assert finals[0].usage.completion_tokens < 2000
    assert client.cancel("to-cancel") is False


@pytest.fixture(scope="module")
def one_at_a_time():
    d = start_daemon(FIXTURES / "parity" / "llama", "--max-queue", "2", "--max-batch-size", "1")
    yield d
    assert d.stop() == 0, d.stderr()


def test_cancel_a_queued_request_and_queue_full(one_at_a_time):
    # One sequence runs at a time, two wait, the next is refused.
    with Client(one_at_a_time.addr) as client:
        active = client.generate(request_id="active", **LONG)
        assert next(active).HasField("chunk")
        results = {}

        def run(rid):
            try:
                results[rid] = client.complete(request_id=rid, **LONG)
            except MlxdClientError as error:
                results[rid] = error

        threads = [threading.Thread(target=run, args=(rid,)) for rid in ("queued-1", "queued-2")]
        for t in threads:
            t.start()
        time.sleep(0.5)
        with pytest.raises(MlxdClientError) as refused:
            client.complete(request_id="one-too-many", **LONG)
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert client.cancel("queued-1") and client.cancel("queued-2")
        assert client.cancel("active")
        for t in threads:
            t.join(10)
        for rid in ("queued-1", "queued-2"):
            assert results[rid].final.finish_reason == pb.FINISH_REASON_CANCELLED
            assert results[rid].final.usage.completion_tokens == 0
        finals = [r.final for r in active if r.HasField("final")]
        assert finals[0].finish_reason == pb.FINISH_REASON_CANCELLED


def test_duplicate_live_request_id_is_rejected(client):
    stream = client.generate(request_id="dup", **LONG)
    assert next(stream).HasField("chunk")
    with pytest.raises(MlxdClientError) as info:
        client.complete(request_id="dup", max_tokens=1, prompt="x")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    stream.close()


def test_health_serving_and_watch(client):
    assert client.health() == "SERVING"
    assert client.health("mlxd.v1.Inference") == "SERVING"
    client.wait_serving(timeout=5)
