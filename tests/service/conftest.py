import pytest
from safetensors.numpy import load_file

from mlxd_client import Client
from tests.helpers.daemon_process import FIXTURES, start_daemon

LLAMA = FIXTURES / "parity" / "llama"


@pytest.fixture(scope="session")
def daemon():
    d = start_daemon(LLAMA, "--max-queue", "2", "--grace-period", "2")
    yield d
    assert d.stop() == 0, d.stderr()


@pytest.fixture()
def client(daemon):
    with Client(daemon.addr) as c:
        yield c


@pytest.fixture(scope="session")
def expected():
    return load_file(str(LLAMA / "expected.safetensors"))
