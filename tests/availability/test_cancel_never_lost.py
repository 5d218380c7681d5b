"""Issue 15 item 4: a client's cancel is registered before any preparation, so a generation cancelled while its
prompt is tokenized or its images decoded never reaches the worker, and one cancelled right after sending never
runs on for nobody."""

import io
import time

import grpc
import pytest
from PIL import Image

from mlxd_client import Client, pb
from tests.availability.attacks import quick_cancels
from tests.helpers.daemon_process import FIXTURES, start_daemon

pytestmark = pytest.mark.process

LLAMA = FIXTURES / "parity" / "llama"


def _live(client: Client, request_ids: list[str]) -> list[str]:
    """The request ids the daemon still holds (a Cancel RPC finds them; it also ends them)."""
    return [rid for rid in request_ids if client.cancel(rid)]


def test_cancels_right_after_sending_are_never_lost(tmp_path):
    daemon = start_daemon(LLAMA, workdir=tmp_path)
    try:
        with Client(daemon.addr) as client:
            # A lost cancel leaves a request generating to the context length (2,048 tokens) for nobody.
            assert quick_cancels(client, 100) == []
    finally:
        assert daemon.stop() == 0, daemon.stderr()


@pytest.mark.parametrize("when", [0.3, 1.0])
def test_a_cancel_while_images_are_decoded_is_not_lost(tmp_path, when):
    daemon = start_daemon(FIXTURES / "parity" / "gemma3", "--max-image-mb", "1", workdir=tmp_path)
    out = io.BytesIO()
    Image.new("RGB", (5000, 5000), (10, 20, 30)).save(out, "PNG")   # ~0.2 s to decode and resize
    image = pb.ContentPart(image=pb.Image(data=out.getvalue()))
    try:
        with Client(daemon.addr) as client:
            call = client.stub.MultimodalGenerate(pb.MultimodalGenerateRequest(
                request_id="images", prompt=pb.MultimodalPrompt(parts=[pb.ContentPart(text="look")] + [image] * 16),
                options=pb.GenerationOptions(max_tokens=0, ignore_eos=True)), timeout=60)
            time.sleep(when)
            call.cancel()
            with pytest.raises(grpc.RpcError) as info:
                list(call)
            assert info.value.code() == grpc.StatusCode.CANCELLED
            # Had the cancel been lost, the request would reach the worker once its images are decoded, and generate
            # to the context length for nobody.
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                assert _live(client, ["images"]) == []
                time.sleep(0.2)
    finally:
        assert daemon.stop() == 0, daemon.stderr()
