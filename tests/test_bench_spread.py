"""bench.common.spread: how far a value moved between rounds, which the comparisons print a warning beside; the
rounds' ratios, their geometric mean and interval, and earlier runs pooled."""

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


def _pairs(ratios: list[float]) -> list[common.Row]:
    return [row for i, r in enumerate(ratios) for row in (
        {"round": i, "case": 16, "contender": "free", "tps": 100.0},
        {"round": i, "case": 16, "contender": "constrained@3", "tps": 100.0 * r})]


def test_the_rounds_ratios_give_their_geometric_mean_within_a_seeded_interval():
    rows = _pairs([0.9, 1.0, 1.1, 0.95, 1.05])
    assert common.round_ratios(rows, "tps", "constrained@3", "free", case=16) == pytest.approx([0.9, 1.0, 1.1, 0.95,
                                                                                                 1.05])
    mean, low, high = common.ratio_interval(rows, "tps", "constrained@3", "free", case=16)
    assert mean == pytest.approx((0.9 * 1.0 * 1.1 * 0.95 * 1.05) ** 0.2)
    assert 0.9 < low < mean < high < 1.1
    assert common.ratio_interval(rows, "tps", "constrained@3", "free", case=16) == (mean, low, high)  # seeded
    steady = common.ratio_interval(_pairs([0.97] * 8), "tps", "constrained@3", "free", case=16)
    assert steady == pytest.approx((0.97, 0.97, 0.97))
    assert all(v != v for v in common.ratio_interval(rows, "tps", "constrained@3", "free", case=1))  # none: nan


def test_pooled_logs_keep_their_rounds_apart(tmp_path):
    import json
    logs = []
    for i, ratios in enumerate([[0.9, 1.0], [1.1]]):
        log = tmp_path / f"run{i}.jsonl"
        log.write_text("".join(json.dumps({**row, "round": row["round"] + 1}) + "\n" for row in _pairs(ratios)))
        logs.append(log)
    rows = common.pooled_rows(logs)
    assert sorted(common.round_ratios(rows, "tps", "constrained@3", "free", case=16)) == pytest.approx([0.9, 1.0, 1.1])


def test_constrained_decode_reports_pooled_runs_with_their_intervals(tmp_path, capsys):
    import json

    from bench.suite import constrained_decode
    logs = []
    for i in range(2):
        rows = []
        for round_ in (1, 2):
            rows.append({"round": round_, "case": 1, "contender": "free", "free_tps": 300.0, "tps": 300.0,
                         "even_free_tps": 300.0})
            rows.append({"round": round_, "case": 1, "contender": "constrained@3", "constrained_tps": 294.0,
                         "tps": 294.0, "even_free_tps": 0.0})
            rows.append({"round": round_, "case": 16, "contender": "free", "free_tps": 2000.0, "tps": 2000.0,
                         "even_free_tps": 1000.0})
            rows.append({"round": round_, "case": 16, "contender": "constrained@3", "constrained_tps": 1960.0,
                         "tps": 1960.0, "even_free_tps": 0.0})
            rows.append({"round": round_, "case": 16, "contender": "mixed@3", "free_tps": 1010.0 + i,
                         "constrained_tps": 1000.0, "tps": 1010.0 + i, "even_free_tps": 1010.0 + i})
        logs.append(tmp_path / f"run{i}.jsonl")
        logs[-1].write_text("".join(json.dumps(row) + "\n" for row in rows))
    constrained_decode.main(["--pool", *map(str, logs)])
    out = capsys.readouterr().out
    assert "1 stream(s), 3 mask processes, 4 rounds: constrained / free 0.980 [0.980, 0.980]" in out
    assert "16 stream(s), 3 mask processes, 4 rounds: constrained / free 0.980 [0.980, 0.980]; beside 1.0" in out
