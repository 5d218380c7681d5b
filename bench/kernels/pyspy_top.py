"""Summarise `py-spy record --format raw` stacks (collapsed: `frame;frame;... count` a line): the frames with the
most samples of their own, and the frames on the most stacks at all (inclusive, each counted once a stack).

    python -m bench pyspy_top STACKS.txt [--top 25] [--match async_eval,_forward_step]
                                         [--within Runner.step] [--without nvrtc,JitModule]

With --native, MLX's C++ frames appear under the Python call that entered them (e.g. `mx.async_eval` encoding the
graph, or the wait for the step before), so this says which part of a decode step's host time is Python building
the graph, which is MLX encoding it, and which is waiting on the device. --match prints only the inclusive share of
the frames whose text contains each given substring (one line each). --within keeps only the stacks with a frame
containing one of its substrings, --without drops those with one of its (e.g. the kernels' first compiles, which
a benchmark's warm-up pays inside the same recording).
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

from bench import common

_LINE = re.compile(r"^(.*) (\d+)$")


def read(path: Path) -> list[tuple[list[str], int]]:
    """The stacks (outermost frame first) with their sample counts."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        m = _LINE.match(line.strip())
        if m:
            stacks.append((m.group(1).split(";"), int(m.group(2))))
    return stacks


def short(frame: str) -> str:
    """A frame without its directories (`name (path/file.py:12)` -> `name (file.py:12)`)."""
    return re.sub(r"\(([^()]*/)?([^/()]+)\)$", r"(\2)", frame)


def chosen(stacks: list[tuple[list[str], int]], within: str | None, without: str | None) -> list[tuple[list[str], int]]:
    """The stacks with a frame containing one of `within`'s substrings and none of `without`'s (comma-separated)."""
    def has(frames: list[str], needles: str) -> bool:
        return any(n in f for f in frames for n in needles.split(","))
    return [(frames, count) for frames, count in stacks
            if (not within or has(frames, within)) and not (without and has(frames, without))]


def summarise(stacks: list[tuple[list[str], int]]) -> tuple[int, collections.Counter, collections.Counter]:
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for frames, count in stacks:
        total += count
        names = [short(f) for f in frames]
        if names:
            own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    return total, own, inclusive


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stacks", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--match", help="comma-separated substrings: only these frames' inclusive shares")
    p.add_argument("--within", help="comma-separated substrings: only the stacks with a frame containing one")
    p.add_argument("--without", help="comma-separated substrings: not the stacks with a frame containing one")
    args = p.parse_args(argv)
    stacks = read(args.stacks)
    total, own, inclusive = summarise(chosen(stacks, args.within, args.without))
    print(f"{total} samples of {sum(c for _, c in stacks)}")
    if args.match:
        lines = [[needle, 100.0 * sum(c for name, c in inclusive.items() if needle in name) / max(total, 1)]
                 for needle in args.match.split(",")]
        print(common.table(["frames containing", "% of samples (any of them on the stack)"], lines))
        return
    for title, counts in (("own samples", own), ("on the stack", inclusive)):
        print(common.table([title, "%"], [[name[:110], 100.0 * c / total] for name, c in counts.most_common(args.top)]))


if __name__ == "__main__":
    main()
