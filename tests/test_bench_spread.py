"""bench.common.spread: how far a value moved between rounds, which the comparisons print a warning beside."""

from __future__ import annotations

import pytest

from bench import common


def _rows(values: list[float], contender: str = "free") -> list[common.Row]:
    return [{"round": i, "case": 1, "contender": contender, "tps": v} for i, v in enumerate(values)]


def test_steady_rounds_spread_little_and_a_swing_is_flagged():
    assert common.spread(_rows([500.0, 505.0, 495.0]), "tps", contender="free") == pytest.approx(0.02)
    swung = common.spread(_rows([528.0, 251.0]), "tps", contender="free")
    assert swung == pytest.approx((528 - 251) / 389.5) and swung > common.NOISY


def test_only_the_selected_rows_count_and_none_spread_nothing():
    rows = _rows([500.0, 500.0]) + _rows([100.0, 900.0], contender="constrained@0")
    assert common.spread(rows, "tps", contender="free") == 0.0
    assert common.spread(rows, "tps", contender="nobody") == 0.0
