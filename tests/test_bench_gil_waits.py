"""bench gil_waits' reading of py-spy's raw stacks: each sample's thread role and state, and the worker's by line."""

from __future__ import annotations

from bench.suite.gil_waits import classify, summarize, worker_lines

LIBC = "0x7fa89f2a3f16 (libc.so.6)"


def test_samples_are_put_to_their_thread_and_state(tmp_path):
    worker = "thread (14): mlx-worker;Thread.run (threading.py:982);Runner.step (mlxd/engine/runner.py:205)"
    assert classify(f"{worker};mlx::core::async_eval (libmlx.so)") == ("worker", "running")
    assert classify(f"{worker};mlx::core::Event::wait (libmlx.so);pthread_cond_wait (libc.so.6);{LIBC}") == \
        ("worker", "blocked")
    assert classify(f"{worker};PyEval_RestoreThread (python3.12);take_gil (python3.12);"
                    f"pthread_cond_timedwait (libc.so.6);{LIBC}") == ("worker", "GIL wait")
    # take_gil unnamed: the timed wait right under the call that let the GIL go (here Python 3.11's time.sleep)
    assert classify(f"{worker};time_sleep (libpython3.11.so.1.0);pthread_cond_timedwait (libc.so.6);{LIBC}") == \
        ("worker", "GIL wait")
    assert classify(f"thread (9): MainThread;select_epoll_poll_impl (selectmodule.c:1600);"
                    f"pthread_cond_timedwait (libc.so.6);{LIBC}") == ("event loop", "GIL wait")
    assert classify("thread (7): Thread-1;0x7f (cygrpc.so);pthread_cond_timedwait (libc.so.6)") == \
        ("other", "blocked")
    assert classify(f"thread (15): mlxd-masks;_serve (mlxd/engine/mask_thread.py:92);"
                    f"PyThread_acquire_lock_timed (libpython3.11.so.1.0);{LIBC}") == ("mask thread", "blocked")
    assert classify("thread (9): MainThread;BaseEventLoop._run_once (asyncio/base_events.py:1884)") == \
        ("event loop", "running")
    raw = tmp_path / "raw.txt"
    raw.write_text(f"{worker};x (y.py:1) 7\nthread (3): parent-watch;time_sleep (t);clock_nanosleep (libc.so.6) 2\n")
    assert summarize(raw) == {"worker": {"running": 7}, "other": {"blocked": 2}}


def test_the_workers_samples_are_counted_by_its_innermost_line_of_the_daemon(tmp_path):
    step = "thread (14): mlx-worker;Thread.run (threading.py:982);Runner.step (mlxd/engine/runner.py:227)"
    launch = f"{step};Runner._sample (mlxd/engine/runner.py:386);mlx::core::async_eval (libmlx.so)"
    raw = tmp_path / "raw.txt"
    raw.write_text(f"{launch} 5\n{launch};take_gil (python3.12);pthread_cond_timedwait (libc.so.6) 2\n"
                   f"{step};x (y.py:1) 1\nthread (9): MainThread;select (selectors.py:1) 4\n")
    assert worker_lines(raw) == {("Runner._sample (engine/runner.py:386)", "running"): 5,
                                 ("Runner._sample (engine/runner.py:386)", "GIL wait"): 2,
                                 ("Runner.step (engine/runner.py:227)", "running"): 1}
