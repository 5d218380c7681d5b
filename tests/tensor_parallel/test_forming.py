"""While the group forms: a rank this host started that exits before it connects fails the group at once, with its
exit code, instead of after the whole connect timeout; a follower that connects before rank 0 accepts waits for it,
and holds it to its heartbeat only from then on."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from mlxd.parallel.channel import HEARTBEAT_SECONDS, HEARTBEAT_TIMEOUT, Leader
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


def test_a_follower_waits_for_rank_0_to_accept_it_then_holds_it_to_its_heartbeat():
    """A follower that connects while rank 0 is still starting (not yet accepting) waits longer than the heartbeat
    timeout without leaving; once accepted, it reads rank 0's frames, heartbeats dropped."""
    leader = Leader("127.0.0.1", 0, followers=1)
    script = textwrap.dedent(f"""
        import queue, threading
        from mlxd.parallel import channel, follower
        sock = channel.connect({leader.addr!r}, 1)
        inbox = queue.SimpleQueue()
        threading.Thread(target=follower._read, args=(sock, inbox), daemon=True).start()
        print(inbox.get(timeout=60)["op"], flush=True)
        """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(HEARTBEAT_TIMEOUT + 1.0)  # rank 0 "still starting"
        assert child.poll() is None
        leader.accept(30.0, lambda reason: None)
        time.sleep(2 * HEARTBEAT_SECONDS)  # a heartbeat or two first: not delivered as a runner call
        leader.send({"op": "runner"})
        assert child.communicate(timeout=30)[0].strip() == "runner"
    finally:
        child.kill()
        leader.close()
