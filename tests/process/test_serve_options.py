"""`mlxd serve` refuses option values it cannot serve with, at once and by name: before this, --max-batch-size 0,
--prefill-chunk 0, --max-stream-backlog 0 or --stalled-stream-seconds 0 started a daemon whose every request
waited for its deadline, and --max-preparing 0 died in a traceback. (Parsing is all `main` does before it fails
on them; a value it accepts is served by a real process.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

from mlxd.cli import main
from tests.helpers.daemon_process import daemon_env

REFUSED = [("--max-batch-size", "0"), ("--prefill-chunk", "-1"), ("--prefill-chunk", "0"),
           ("--max-stream-backlog", "0"), ("--max-preparing", "0"), ("--stalled-stream-seconds", "0"),
           ("--stall-timeout", "nan"), ("--max-message-mb", "0"), ("--kv-cache-mb", "-1"),
           ("--max-prompt-tokens", "-1"), ("--idle-connection-seconds", "-5"), ("--grace-period", "inf"),
           ("--speculate-depth", "0"), ("--tensor-parallel", "0"), ("--max-queue", "2.5")]


@pytest.mark.parametrize(("flag", "value"), REFUSED)
def test_a_value_it_cannot_serve_with_exits_2_naming_the_option(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--model", "/nonexistent", flag, value, "--help"])  # a value let through: help, exit 0
    assert exit_.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value"), [("--kv-cache-mb", "0"), ("--prefix-cache-mb", "0"), ("--max-queue", "0"),
                                             ("--grace-period", "0"), ("--max-connections", "0")])
def test_zero_stays_a_setting_where_it_means_one(flag, value, tmp_path):
    # kv 0 = automatic, prefix cache 0 = off, no waiting queue, cancel at once on SIGTERM, connections automatic:
    # the options parse, and the daemon then fails only on the model that does not exist.
    done = subprocess.run([sys.executable, "-m", "mlxd", "serve", "--model", str(tmp_path / "none"), "--addr",
                           f"unix:{tmp_path / 's.sock'}", flag, value], capture_output=True, text=True, timeout=60,
                          env=daemon_env())
    assert done.returncode == 1 and "argument" not in done.stderr, done.stderr[-2000:]
