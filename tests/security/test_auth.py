"""Bearer-token authentication with real clients: right, wrong and missing tokens; the health exemption."""

import os
import stat
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mlxd_client import Client, MlxdClientError
from tests.helpers.daemon_process import FIXTURES, start_daemon

pytestmark = pytest.mark.process

LLAMA = FIXTURES / "parity" / "llama"
TOKEN = "s3cret-token-0123456789abcdef"


def _token_file(folder: Path) -> Path:
    path = folder / "token"
    path.write_text(TOKEN + "\n")  # a trailing newline, as `echo` writes it, is not part of the token
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def private(tmp_path_factory):
    """Token required for everything, on a unix socket in a directory the daemon creates."""
    folder = tmp_path_factory.mktemp("auth")
    daemon = start_daemon(LLAMA, "--auth-token-file", str(_token_file(folder)), addr="unix:", workdir=folder)
    yield daemon
    assert daemon.stop() == 0, daemon.stderr()
    assert not Path(daemon.addr[len("unix:"):]).parent.exists()


@pytest.fixture(scope="module")
def exempt(tmp_path_factory):
    """All interfaces: the token makes that allowed; health is exempt for probes."""
    folder = tmp_path_factory.mktemp("auth-exempt")
    daemon = start_daemon(LLAMA, "--auth-token-file", str(_token_file(folder)), "--auth-exempt-health",
                          addr="0.0.0.0:0", workdir=folder)
    yield daemon
    assert daemon.stop() == 0, daemon.stderr()


def _local(addr: str) -> str:
    return addr.replace("0.0.0.0", "127.0.0.1")


def _code(call) -> grpc.StatusCode:
    with pytest.raises(MlxdClientError) as info:
        call()
    return info.value.code


def test_private_socket_directory_and_mode(private):
    sock = Path(private.addr[len("unix:"):])
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    folder = sock.parent.stat()
    assert stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == os.getuid()


def test_right_token_is_served(private):
    with Client(private.addr, token=TOKEN) as client:
        assert client.health() == "SERVING"
        assert client.complete("hi", max_tokens=2, ignore_eos=True).final.usage.completion_tokens == 2
        assert client.tokenize("hi")


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789abcdef", TOKEN[:-1], TOKEN + "x", ""])
def test_missing_or_wrong_token_is_unauthenticated(private, token):
    with Client(private.addr, token=token) as client:
        assert _code(lambda: client.complete("hi", max_tokens=2)) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(client.model_info) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: client.cancel("x")) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(client.health) == grpc.StatusCode.UNAUTHENTICATED  # no exemption on this daemon


def test_other_schemes_and_case(private):
    channel = grpc.insecure_channel(private.addr)
    check = channel.unary_unary("/mlxd.v1.Inference/GetModelInfo", request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as info:
        check(b"", metadata=[("authorization", f"Basic {TOKEN}")], timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert check(b"", metadata=[("authorization", f"bearer {TOKEN}")], timeout=5) is not None
    channel.close()


def test_unknown_methods_are_unauthenticated_without_the_token(private):
    channel = grpc.insecure_channel(private.addr)
    call = channel.unary_unary("/mlxd.v1.Inference/NoSuchMethod", request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as info:
        call(b"", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        call(b"", metadata=[("authorization", f"Bearer {TOKEN}")], timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    channel.close()


def test_reflection_needs_the_token_too(private):
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    for token, allowed in ((None, False), (TOKEN, True)):
        with Client(private.addr, token=token) as client:
            stub = reflection_pb2_grpc.ServerReflectionStub(client._channel)
            responses = stub.ServerReflectionInfo(iter([request]), timeout=5)
            if allowed:
                names = [s.name for s in next(responses).list_services_response.service]
                assert "mlxd.v1.Inference" in names
            else:
                with pytest.raises(grpc.RpcError) as info:
                    next(responses)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_exemption_lets_probes_through_only(exempt):
    assert exempt.addr.startswith("0.0.0.0:")
    with Client(_local(exempt.addr)) as probe:
        assert probe.health() == "SERVING"
        assert probe.health("mlxd.v1.Inference") == "SERVING"
        probe.wait_serving(timeout=5)  # Watch is exempt as well
        assert _code(lambda: probe.complete("hi", max_tokens=1)) == grpc.StatusCode.UNAUTHENTICATED
    with Client(_local(exempt.addr), token=TOKEN) as client:
        assert client.complete("hi", max_tokens=1).final.usage.completion_tokens == 1


def test_client_cli_sends_the_token_from_a_file(private, tmp_path, capsys):
    from mlxd_client.cli import main
    assert main(["health", "--addr", private.addr, "--token-file", str(_token_file(tmp_path))]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert main(["health", "--addr", private.addr]) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err
