"""While the group forms: a rank this host started that exits before it connects fails the group at once, with its
exit code, instead of after the whole connect timeout; a follower that connects before rank 0 accepts waits for it,
and holds it to its heartbeat only from then on; until both ends of a connection have loaded their share, silence
is allowed LOAD_TIMEOUT, and HEARTBEAT_TIMEOUT after."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time

import pytest

from mlxd.parallel.channel import (
    HEARTBEAT,
    HEARTBEAT_SECONDS,
    HEARTBEAT_TIMEOUT,
    LOAD_TIMEOUT,
    LOADED,
    Leader,
    recv_frame,
    send_frame,
)
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
        end = channel.connect({leader.addr!r}, 1)
        inbox = queue.SimpleQueue()
        threading.Thread(target=follower._read, args=(end.sock, inbox, end.loaded), daemon=True).start()
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


def test_a_follower_may_be_silent_until_both_ranks_have_loaded_and_not_after():
    """A follower's silence before it says LOADED (its whole host stalled by the ranks' weight reads), or before rank
    0 has loaded (its first runner call), does not fail the group; once both have, HEARTBEAT_TIMEOUT of it does,
    with no frame needed after rank 0's load (a follower stopped right after it was given the load timeout)."""
    assert LOAD_TIMEOUT > HEARTBEAT_TIMEOUT + 2
    leader = Leader("127.0.0.1", 0, followers=1)
    failures: list[str] = []
    host, port = leader.addr.rsplit(":", 1)
    follower = socket.create_connection((host, int(port)))
    try:
        send_frame(follower, {"op": "hello", "rank": 1})
        leader.accept(30.0, failures.append)
        time.sleep(HEARTBEAT_TIMEOUT + 1.0)  # loading, silent
        send_frame(follower, LOADED)
        time.sleep(HEARTBEAT_TIMEOUT + 1.0)  # loaded and silent, while rank 0 still loads
        assert failures == []
        leader.send({"op": "runner"})  # rank 0 has loaded; the follower stays silent
        deadline = time.monotonic() + HEARTBEAT_TIMEOUT + 2.0
        while not failures and time.monotonic() < deadline:
            time.sleep(0.05)
        assert failures == [f"rank 1 stalled: no heartbeat for {HEARTBEAT_TIMEOUT:.0f} s"]
    finally:
        follower.close()
        leader.close()


def test_a_follower_allows_rank_0_silence_until_both_have_loaded():
    """Rank 0 accepts (its first heartbeat), then is silent while it loads: the follower waits; once rank 0's first
    runner call has come and the follower has loaded, HEARTBEAT_TIMEOUT of silence makes the follower exit."""
    server = socket.create_server(("127.0.0.1", 0))
    script = textwrap.dedent(f"""
        import queue, threading
        from mlxd.parallel import channel, follower
        end = channel.connect("127.0.0.1:{server.getsockname()[1]}", 1)
        end.say_loaded()  # this follower has loaded its share
        inbox = queue.SimpleQueue()
        threading.Thread(target=follower._read, args=(end.sock, inbox, end.loaded), daemon=True).start()
        print(inbox.get(timeout=60)["op"], flush=True)
        threading.Event().wait(60)
        """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    rank_0, _ = server.accept()
    try:
        assert recv_frame(rank_0) == {"op": "hello", "rank": 1}
        send_frame(rank_0, HEARTBEAT)
        time.sleep(HEARTBEAT_TIMEOUT + 1.0)  # rank 0 loading, silent
        assert child.poll() is None
        send_frame(rank_0, {"op": "runner"})
        started = time.monotonic()
        out, err = child.communicate(timeout=HEARTBEAT_TIMEOUT + 10)
        assert out.strip() == "runner"
        assert child.returncode == 1
        assert time.monotonic() - started < HEARTBEAT_TIMEOUT + 2.0
        assert f"rank 0 stalled: nothing from it for {HEARTBEAT_TIMEOUT:.0f} s; exiting" in err
    finally:
        child.kill()
        rank_0.close()
        server.close()
