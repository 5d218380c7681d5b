"""While rank 0 waits for the other ranks to connect: a rank this host started that exits first fails the group at
once, with its exit code, instead of after the whole connect timeout."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from mlxd.parallel.channel import Leader
from mlxd.parallel.launch import Ranks


def test_a_rank_that_exits_before_it_connects_fails_the_group_at_once():
    leader = Leader("127.0.0.1", 0, followers=1)
    ranks = Ranks(leader, "ring", children=[subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])])
    leader.lost = ranks.exited
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="rank 1 exited with code 3"):
        leader.accept(60.0, lambda reason: None)
    assert time.monotonic() - started < 10.0  # seconds, not the 60 s timeout
    leader.close()


def test_ranks_still_starting_are_waited_for_until_the_timeout():
    leader = Leader("127.0.0.1", 0, followers=1)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    ranks = Ranks(leader, "ring", children=[sleeper])
    leader.lost = ranks.exited
    try:
        with pytest.raises(TimeoutError, match="1 rank\\(s\\) did not connect within 1 s"):
            leader.accept(1.0, lambda reason: None)
        assert ranks.exited() is None
    finally:
        sleeper.kill()
        sleeper.wait()
        leader.close()
