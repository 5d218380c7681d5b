"""bench compile_watch's view of MLX's PTX cache folder, and speculation_replay's tasks served by one speculator:
the parts of two GPU-session benches that run without a GPU or a daemon."""

from __future__ import annotations

from bench.suite.compile_watch import KernelFolder, short
from bench.suite.speculation_replay import replay, served_rates

COSTS = [1.0, 1.3, 1.4, 1.5, 1.6]


def test_the_kernel_folder_names_the_kernels_new_since_the_last_look(tmp_path):
    (tmp_path / "old.ptx").write_text("")
    kernels = KernelFolder(tmp_path)
    assert kernels.new() == []
    (tmp_path / "gather_float16_int32_1.ptx").write_text("")
    (tmp_path / "gather_float16_int32_1.txt").write_text("")  # MLX's kernel names beside each PTX: not a kernel
    (tmp_path / ("a" * 245)).mkdir()  # a long module name is split into folders
    (tmp_path / ("a" * 245) / "b.ptx").write_text("")
    assert kernels.new() == sorted([f"{'a' * 245}/b.ptx", "gather_float16_int32_1.ptx"])
    assert kernels.new() == []
    assert short("x" * 200, 20) == "x" * 17 + "..."


def _recorded() -> dict[str, tuple[list[int], list[int]]]:
    """A copy task (the output repeats the prompt) and free text (no token repeats)."""
    phrase = list(range(100, 140))
    return {"copy": (phrase, phrase[:30]), "free": (phrase, list(range(500, 530)))}


def test_served_rows_share_the_speculators_prior():
    rates = served_rates(_recorded(), COSTS, pause=0.0, turns=3)
    alone = [replay(prompt, output, COSTS, adaptive=True)[0] for prompt, output in _recorded().values()]
    assert len(rates) == 2 and rates[0] > 1.5  # the copy is drafted
    assert rates[1] <= 1.0 and alone[1] <= 1.0  # free text never gains; what it loses is what the prior cost
