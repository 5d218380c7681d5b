"""fill_bitmasks: a batch's masks filled together on llguidance's threads equal each row's own fill, and a row
whose grammar fails is reported without stopping the others."""

from __future__ import annotations

import numpy as np
import pytest

from mlxd.constraints import ConstraintError, RowConstraint
from mlxd.constraints.matcher import fill_bitmasks
from tests.constraints.walks import compile_spec


def _rows(tiny) -> list[RowConstraint]:
    """Rows of different grammars, each some tokens into its output, so their masks differ."""
    specs = [("regex", "[0-9]+"), ("regex", "ab(c|d)*"), ("json_object", ""), ("regex", "[0-9]+")]
    rows = [RowConstraint(compile_spec(tiny, kind, source)) for kind, source in specs]
    for row, text in zip(rows, ["12", "abcd", "{", ""]):
        for token in tiny.tokenizer.tokenize_str(text):
            row.consume(token)
    return rows


def test_the_batch_fill_equals_each_rows_fill(tiny):
    rows = _rows(tiny)
    words = rows[0].mask_words
    alone = np.zeros((len(rows), words), np.int32)
    for j, row in enumerate(rows):
        row.fill_bitmask(alone[j])
    together = np.zeros((len(rows), words), np.int32)
    assert fill_bitmasks(rows, together) == [None] * len(rows)
    assert np.array_equal(together, alone)
    assert len({together[j].tobytes() for j in range(3)}) == 3  # the grammars' masks do differ


def test_a_failing_row_is_reported_and_the_others_fill(tiny):
    failing = RowConstraint(compile_spec(tiny, "regex", "x{1000}{1000}"))  # the lexer exceeds its limits
    out = np.zeros((1, failing.mask_words), np.int32)
    for token in tiny.tokenizer.tokenize_str("x" * 64):  # a few tokens in, a fill or a consume fails
        if fill_bitmasks([failing], out)[0] is not None or failing.failure() is not None:
            break
        try:
            failing.consume(token)
        except ConstraintError:
            break
    assert failing.failure() is not None
    rows = [*_rows(tiny)[:2], failing]
    masks = np.zeros((3, failing.mask_words), np.int32)
    failures = fill_bitmasks(rows, masks)
    assert failures[:2] == [None, None] and masks[0].any() and masks[1].any()
    assert failures[2] is not None and failures[2].code == "too_large"


def test_the_masks_must_be_one_contiguous_int32_block(tiny):
    rows = _rows(tiny)[:2]
    words = rows[0].mask_words
    for bad in (np.zeros((2, words), np.int64), np.zeros((3, words), np.int32), np.zeros((2, words + 1), np.int32),
                np.zeros((2, 2 * words), np.int32)[:, ::2]):
        with pytest.raises(ValueError):
            fill_bitmasks(rows, bad)
    assert fill_bitmasks([], np.zeros((0, words), np.int32)) == []


def test_rows_of_a_tokenizer_narrower_than_the_logits_fill_together(tiny, monkeypatch):
    """A padded vocabulary (more logits than tokens): the rows still fill in one batch call, which is what the
    mask processes serve (they went one at a time through fill_bitmask in the worker before), and the ids past the
    tokenizer stay disallowed."""
    from mlxd.engine import masks as masks_module

    rows = _rows(tiny)
    own = rows[0].mask_words
    calls: list[int] = []
    batch = masks_module.fill_bitmasks

    def spy(batch_rows, out):
        calls.append(len(batch_rows))
        return batch(batch_rows, out)

    monkeypatch.setattr(masks_module, "fill_bitmasks", spy)
    filled = masks_module.fill_masks(rows, own * 32 + 100)  # logits 100 + a word's ids wider than the tokenizer
    assert calls == [len(rows)]
    alone = np.zeros((len(rows), own), np.int32)
    for j, row in enumerate(rows):
        row.fill_bitmask(alone[j])
    assert filled.bitmasks.shape[1] > own
    assert np.array_equal(filled.bitmasks[:, :own], alone) and not filled.bitmasks[:, own:].any()


def test_a_verify_steps_masks_allow_no_id_past_a_narrower_tokenizer(tiny):
    """draft_masks, like a plain step's masks: the ids between the tokenizer's end and the logits' are never
    allowed at a position the constraint fills (they were, and a verify step could take one its grammar refuses)."""
    from mlxd.engine.masks import draft_masks

    rows = _rows(tiny)
    own = rows[0].mask_words
    drafted = draft_masks(rows, [[] for _ in rows], own * 32 + 100)
    assert drafted.masks.shape[2] > own
    assert drafted.masks[:, 0, :own].any() and not drafted.masks[:, 0, own:].any()
