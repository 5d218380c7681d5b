"""The service against a scripted fake engine, in-process: cancels are registered before any preparation, a stream
nobody reads is bounded and then ended, and a final message nobody takes holds nothing."""

import logging
import threading
import time
import urllib.parse

import grpc
import h2.events
import pytest

from mlxd.service.limits import Limits
from mlxd_client import Client, MlxdClientError, pb
from mlxd_proto.v1 import inference_pb2_grpc as pb_grpc
from tests.availability.inprocess import FakeEngine, serving
from tests.availability.raw_http2 import RawConnection

HEAVY_STOPS = [f"{i:03d}" + "x" * 1021 for i in range(256)]   # 256 x 1,024 trie nodes: ~0.3 s to build


def _request(request_id: str, **options) -> bytes:
    return pb.GenerateRequest(request_id=request_id, tokens=pb.TokenIds(ids=[5, 6]),
                              options=pb.GenerationOptions(**options)).SerializeToString()


def _wait(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_generate_streams_chunks_then_one_final():
    with serving(FakeEngine(tokens=5)) as served, Client(served.addr) as client:
        result = client.complete(tokens=[5, 6], request_id="plain")
        assert result.token_ids == [5] * 5 and result.final.finish_reason == pb.FINISH_REASON_LENGTH
        assert result.final.request_id == "plain"


def test_cancel_rpc_finds_a_request_still_waiting_for_preparation():
    # One preparation slot, held by a request whose stop strings take a while to compile: the next request waits
    # for the slot, and a Cancel RPC finds it there; it ends CANCELLED and never reaches the engine.
    with serving(FakeEngine(tokens=1), slots=1) as served, Client(served.addr) as client:
        results = {}

        def run(request_id, **options):
            results[request_id] = client.complete(tokens=[5], request_id=request_id, **options)

        heavy = [threading.Thread(target=run, args=(f"heavy-{i}",), kwargs={"stop": HEAVY_STOPS}) for i in range(3)]
        for t in heavy:
            t.start()
        waiting = threading.Thread(target=run, args=("waiting",))
        waiting.start()
        assert _wait(lambda: client.cancel("waiting"))
        waiting.join(30)
        for t in heavy:
            t.join(30)
        assert results["waiting"].final.finish_reason == pb.FINISH_REASON_CANCELLED
        assert "waiting" not in {r.request_id for r in served.engine.submitted}


def test_a_client_gone_during_preparation_never_reaches_the_engine():
    with serving(FakeEngine(tokens=1), slots=1) as served, Client(served.addr) as client:
        def call(request_id, **options):
            request = pb.GenerateRequest(request_id=request_id, tokens=pb.TokenIds(ids=[5]),
                                         options=pb.GenerationOptions(**options))
            return client.stub.Generate(request, timeout=30)

        heavy = [call(f"heavy-{i}", stop=HEAVY_STOPS) for i in range(3)]
        assert _wait(lambda: served.preparation.running == 1)  # a heavy one holds the only slot
        quitter = call("quitter")
        time.sleep(0.05)
        quitter.cancel()   # while it waits for the preparation slot, behind the heavy ones
        for stream in heavy:
            assert [r for r in stream if r.HasField("final")]
        assert {r.request_id for r in served.engine.submitted} == {"heavy-0", "heavy-1", "heavy-2"}


def test_a_stream_nobody_reads_is_cancelled_at_the_sink_limit(caplog):
    # The fake engine does not pause (as the worker does at --max-stream-backlog): the service's own bound stops it.
    with serving(FakeEngine(tokens=100_000), stream_limit=32) as served:
        conn = RawConnection(served.addr, window=0)
        stream = conn.open_stream("/mlxd.v1.Inference/Generate", _request("unread"))
        assert _wait(lambda: served.engine.submitted and served.engine.live_count() == 0)
        request = served.engine.submitted[0]
        assert request.cancel.reason == "the client stopped reading"
        assert request.events.backlog() <= 34   # the limit, the event that passed it and the final one
        with Client(served.addr) as client:
            assert client.cancel("unread") is False   # the service let go of it too
            assert client.health() == "SERVING"
        _read_again_and_be_told(conn, stream, "events unread")


def test_the_engine_sees_the_backlog_of_a_client_that_stopped_reading():
    with serving(FakeEngine(tokens=100_000, pause_at=16), stalled_seconds=0.4) as served:
        conn = RawConnection(served.addr, window=0)
        stream = conn.open_stream("/mlxd.v1.Inference/Generate", _request("paused"))
        assert _wait(lambda: served.engine.submitted)
        request = served.engine.submitted[0]
        # The fake engine pauses at 16 untaken events; the write waiting on the client ends the call after 0.4 s.
        assert _wait(lambda: request.cancel.is_set)
        assert request.events.backlog() >= 16
        assert _wait(lambda: served.engine.live_count() == 0)
        _read_again_and_be_told(conn, stream, "waited 0.4 s")


def test_a_final_message_nobody_takes_ends_the_call():
    # Two tokens, the final message: none of it can be delivered through a zero window. After the stalled-stream
    # time the call ends as a client cancel would, and nothing is left of the request.
    with serving(FakeEngine(tokens=2), stalled_seconds=0.4) as served:
        conn = RawConnection(served.addr, window=0)
        stream = conn.open_stream("/mlxd.v1.Inference/Generate", _request("final-unread"))
        assert _wait(lambda: served.engine.submitted and served.engine.live_count() == 0)
        with Client(served.addr) as client:
            assert _wait(lambda: client.cancel("final-unread") is False)
            assert client.complete(tokens=[5], request_id="final-unread").final.usage.completion_tokens == 2
        _read_again_and_be_told(conn, stream, "waited 0.4 s")


def test_a_grpc_client_that_pauses_past_the_stall_is_told_when_it_reads_again():
    # A real grpcio client stops reading (a pause in its own code) until its receive window is full and the write
    # waiting on it passes the stalled-stream time; when it reads again it gets what was on its way, then
    # RESOURCE_EXHAUSTED, long before its deadline. Its window is kept small (no BDP growth) so that it fills at once.
    small_window = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
    with serving(FakeEngine(tokens=100_000, pause_at=16), stalled_seconds=0.4) as served, \
            grpc.insecure_channel(served.addr, options=small_window) as channel:
        responses = pb_grpc.InferenceStub(channel).Generate(
            pb.GenerateRequest(request_id="paused-reader", tokens=pb.TokenIds(ids=[5, 6])), timeout=60)
        next(responses)
        assert _wait(lambda: served.engine.submitted and served.engine.live_count() == 0, 30)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            for _ in responses:
                pass
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "waited 0.4 s" in caught.value.details() and time.monotonic() - started < 30
        with Client(served.addr) as client:
            assert client.health() == "SERVING"


def test_a_shutdown_while_an_abandoned_call_waits_for_its_client_is_quiet(caplog, capfd):
    # The abandoned call's handler waits for its client to read again; the shutdown ends it as a client's leaving
    # would, without grpc's ERROR for a handler still running at its stop.
    with serving(FakeEngine(tokens=100_000, pause_at=16), stalled_seconds=0.4) as served:
        conn = RawConnection(served.addr, window=0)
        conn.open_stream("/mlxd.v1.Inference/Generate", _request("never-reads"))
        assert _wait(lambda: served.engine.submitted and served.engine.live_count() == 0)
        time.sleep(0.5)   # the handler is waiting to tell its client by now
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert "Traceback" not in capfd.readouterr().err   # grpc prints one for a handler cancelled at its stop
    conn.close()


def _read_again_and_be_told(conn: RawConnection, stream: int, why: str) -> None:
    """The client of an abandoned call reads again: it gets the message it had left waiting, then the call ends
    RESOURCE_EXHAUSTED saying why (before the fix it got no status and waited for its deadline, or forever)."""
    conn.open_window(stream)
    deadline = time.monotonic() + 10
    while conn.status(stream) is None and time.monotonic() < deadline:
        conn.read(0.2)
    assert conn.status(stream) == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
    assert conn.messages(stream)   # the message the client had left waiting came first
    message = next(dict(e.headers)["grpc-message"] for e in conn.events
                   if isinstance(e, h2.events.TrailersReceived) and e.stream_id == stream)
    assert why in urllib.parse.unquote(message) and "the request was cancelled" in urllib.parse.unquote(message)
    conn.close()


def test_duplicate_request_id_is_refused_before_any_preparation():
    with serving(FakeEngine(tokens=100_000, step=0.01)) as served, Client(served.addr) as client:
        first = client.generate(tokens=[5], request_id="dup")
        assert next(first).HasField("chunk")
        with pytest.raises(MlxdClientError) as info:
            client.complete(tokens=[5], request_id="dup")
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "'dup'" in info.value.details
        assert [r.request_id for r in served.engine.submitted] == ["dup"]
        first.close()


def test_a_response_beyond_the_message_limit_is_resource_exhausted():
    # gRPC would fail the send inside the server (ExecuteBatchError, logged with a traceback) instead.
    with serving(limits=Limits(max_message_bytes=10_000)) as served, Client(served.addr) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.stub.Tokenize(pb.TokenizeRequest(text="ab " * 5_000), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the response would be" in info.value.details()
