"""The mask thread's hand-offs: a job's value or its error reaches the worker, jobs run in turn on the one thread,
and the thread ends once its owner is gone."""

from __future__ import annotations

import gc
import threading
import time

import pytest

from mlxd.engine.mask_thread import HandOff, MaskThread


def test_a_job_runs_on_the_thread_and_hands_its_value_back():
    thread = MaskThread(name="mlxd-masks-test")
    out = thread.submit(lambda a, b: (threading.current_thread().name, a + b), 2, 3)
    assert out.result() == ("mlxd-masks-test", 5)
    assert out.result() == ("mlxd-masks-test", 5)  # read again: the same value, no wait


def test_a_jobs_error_is_raised_where_the_worker_waits_and_the_thread_goes_on():
    thread = MaskThread()
    failed = thread.submit(lambda: 1 / 0)
    failed.wait()  # waits without raising
    with pytest.raises(ZeroDivisionError):
        failed.result()
    assert thread.submit(lambda: "next").result() == "next"


def test_jobs_run_in_the_order_given():
    thread = MaskThread()
    seen: list[int] = []
    outs = [thread.submit(lambda i=i: (time.sleep(0.001 * (5 - i)), seen.append(i))) for i in range(5)]
    for out in outs:
        out.result()
    assert seen == [0, 1, 2, 3, 4]


def test_a_hand_off_set_by_another_thread_wakes_its_reader():
    told: HandOff[str] = HandOff()
    threading.Timer(0.01, told.set, args=("told",)).start()
    assert told.result() == "told"


def test_the_thread_ends_when_its_owner_is_collected():
    thread = MaskThread(name="mlxd-masks-collected")
    thread.submit(lambda: None).result()
    del thread
    gc.collect()
    deadline = time.monotonic() + 5
    while any(t.name == "mlxd-masks-collected" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "mlxd-masks-collected" for t in threading.enumerate())


def test_stop_ends_the_thread_after_the_jobs_in_hand():
    thread = MaskThread(name="mlxd-masks-stopped")
    slow = thread.submit(lambda: (time.sleep(0.05), "done")[1])
    thread.stop()
    assert slow.result() == "done"
    assert not any(t.name == "mlxd-masks-stopped" for t in threading.enumerate())


def test_the_interpreter_exits_after_the_job_in_hand(tmp_path):
    """A process ending while a job runs waits for it (the job inside MLX or llguidance at teardown could abort)."""
    import subprocess
    import sys

    marker = tmp_path / "finished"
    script = ("import time, pathlib\n"
              "from mlxd.engine.mask_thread import MaskThread\n"
              "thread = MaskThread()\n"
              f"thread.submit(lambda: (time.sleep(0.3), pathlib.Path({str(marker)!r}).write_text('yes')))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "yes"
