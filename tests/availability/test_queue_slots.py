"""Issue 15 item 5: requests whose client left or whose deadline passed while they wait in the queue free their
slot at once: the service turns each into a cancel at once (the client's task ends), and the worker no longer
counts a cancelled request against --max-queue."""

import threading
import time

import grpc
import pytest

from mlxd_client import Client, MlxdClientError, pb
from tests.helpers.daemon_process import FIXTURES, start_daemon

pytestmark = pytest.mark.process

LONG = dict(tokens=[5] * 8, max_tokens=0, ignore_eos=True)


def test_gone_clients_free_their_queue_slots(tmp_path):
    daemon = start_daemon(FIXTURES / "parity" / "llama", "--max-queue", "2", "--max-batch-size", "1",
                          workdir=tmp_path)
    try:
        with Client(daemon.addr) as client:
            active = client.generate(request_id="active", **LONG)
            assert next(active).HasField("chunk")
            # Two wait behind it: one whose client leaves, one whose deadline passes.
            leaving = client.stub.Generate(pb.GenerateRequest(request_id="leaving", tokens=pb.TokenIds(ids=[5]),
                                                              options=pb.GenerationOptions(max_tokens=0)), timeout=60)
            expiring = threading.Thread(target=lambda: pytest.raises(
                MlxdClientError, lambda: client.complete(request_id="expiring", timeout=0.5, **LONG)))
            expiring.start()
            time.sleep(0.3)
            leaving.cancel()
            expiring.join()
            time.sleep(0.5)
            # The queue holds nobody now: a newcomer is queued behind "active" (its deadline passes there), not
            # refused with RESOURCE_EXHAUSTED.
            with pytest.raises(MlxdClientError) as info:
                client.complete(request_id="newcomer", timeout=1.0, **LONG)
            assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED, info.value
            client.cancel("active")
    finally:
        assert daemon.stop() == 0, daemon.stderr()
