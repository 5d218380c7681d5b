"""TLS and mutual TLS with real clients and certificates made here."""

import grpc
import pytest

from mlxd_client import Client, MlxdClientError, TlsOptions
from tests.helpers.daemon_process import FIXTURES, start_daemon
from tests.security.certs import make_authority

pytestmark = pytest.mark.process

LLAMA = FIXTURES / "parity" / "llama"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca, rogue = make_authority(folder, "test-ca"), make_authority(folder, "rogue-ca")
    return {"ca": ca, "rogue_ca": rogue, "server": ca.issue(folder, "server", server=True),
            "client": ca.issue(folder, "client", server=False),
            "rogue_client": rogue.issue(folder, "rogue-client", server=False)}


@pytest.fixture(scope="module")
def tls_daemon(pki, tmp_path_factory):
    """TLS alone makes serving every interface allowed."""
    daemon = start_daemon(LLAMA, "--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["server"].key),
                          addr="0.0.0.0:0", workdir=tmp_path_factory.mktemp("tls"))
    yield daemon
    assert daemon.stop() == 0, daemon.stderr()


@pytest.fixture(scope="module")
def mtls_daemon(pki, tmp_path_factory):
    daemon = start_daemon(LLAMA, "--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["server"].key),
                          "--tls-client-ca", str(pki["ca"].cert), addr="127.0.0.1:0",
                          workdir=tmp_path_factory.mktemp("mtls"))
    yield daemon
    assert daemon.stop() == 0, daemon.stderr()


def _port(daemon) -> str:
    return daemon.addr.rsplit(":", 1)[1]


def _unavailable(client: Client) -> str:
    with pytest.raises(MlxdClientError) as info:
        client.health(timeout=5)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    return info.value.details


def test_tls_client_is_served(tls_daemon, pki):
    tls = TlsOptions.from_files(ca=pki["ca"].cert)
    with Client(f"localhost:{_port(tls_daemon)}", tls=tls) as client:
        assert client.health() == "SERVING"
        assert client.complete("hi", max_tokens=2, ignore_eos=True).final.usage.completion_tokens == 2


def test_plaintext_client_cannot_talk_to_a_tls_daemon(tls_daemon):
    with Client(f"127.0.0.1:{_port(tls_daemon)}") as client:
        _unavailable(client)


def test_client_that_does_not_trust_the_server_refuses_it(tls_daemon, pki):
    tls = TlsOptions.from_files(ca=pki["rogue_ca"].cert)  # not the CA that signed the server
    with Client(f"localhost:{_port(tls_daemon)}", tls=tls) as client:
        _unavailable(client)


def test_mutual_tls_with_a_client_certificate(mtls_daemon, pki):
    tls = TlsOptions.from_files(ca=pki["ca"].cert, cert=pki["client"].cert, key=pki["client"].key)
    with Client(f"localhost:{_port(mtls_daemon)}", tls=tls) as client:
        assert client.health() == "SERVING"
        assert client.complete("hi", max_tokens=1).final.usage.completion_tokens == 1


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls_daemon, pki):
    with Client(f"localhost:{_port(mtls_daemon)}", tls=TlsOptions.from_files(ca=pki["ca"].cert)) as client:
        _unavailable(client)


def test_mutual_tls_refuses_a_certificate_from_another_ca(mtls_daemon, pki):
    tls = TlsOptions.from_files(ca=pki["ca"].cert, cert=pki["rogue_client"].cert, key=pki["rogue_client"].key)
    with Client(f"localhost:{_port(mtls_daemon)}", tls=tls) as client:
        _unavailable(client)


def test_client_cli_over_mutual_tls(mtls_daemon, pki, capsys):
    from mlxd_client.cli import main
    addr = f"localhost:{_port(mtls_daemon)}"
    assert main(["info", "--addr", addr, "--tls-ca", str(pki["ca"].cert), "--tls-cert", str(pki["client"].cert),
                 "--tls-key", str(pki["client"].key)]) == 0
    assert '"vocab_size": 320' in capsys.readouterr().out
