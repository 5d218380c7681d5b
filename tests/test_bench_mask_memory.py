"""bench mask_memory runs each kind of step and reports them against the resident mask (tiny sizes, this CPU)."""

from __future__ import annotations

from bench.suite import mask_memory


def test_every_kind_is_timed_and_reported(capsys):
    mask_memory.main(["--rows", "2", "--vocab", "256", "--hidden", "32", "--steps", "12", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "advised: False" in out  # no CUDA here
    for kind in mask_memory.KINDS:
        assert f"\n{kind} " in out or out.startswith(kind)
