"""bench/common.py `patched`: the switch a benchmark flips for some of its rounds (a module's attribute, or a class's
in a module) holds the given value inside the block and its own again after it, also when the block raises; a
name that is not there (a typo) is refused rather than set."""

from __future__ import annotations

import pytest

from bench import common
from mlxd.engine import speculation
from mlxd.engine.speculation import Speculator


def test_patched_sets_attributes_for_the_block_and_restores_them():
    margin, depth = speculation._MARGIN, Speculator.max_depth
    with common.patched("mlxd.engine.speculation._MARGIN=3.0; mlxd.engine.speculation.Speculator.max_depth=7"):
        assert speculation._MARGIN == 3.0 and Speculator.max_depth == 7
    assert speculation._MARGIN == margin and Speculator.max_depth == depth


def test_patched_restores_after_an_error_and_refuses_what_is_not_there():
    margin = speculation._MARGIN
    with pytest.raises(RuntimeError), common.patched("mlxd.engine.speculation._MARGIN=9.0"):
        raise RuntimeError
    assert speculation._MARGIN == margin
    with pytest.raises(AttributeError), common.patched("mlxd.engine.speculation._MARGN=1.0"):
        pass
    with pytest.raises(ValueError, match="no importable module"), common.patched("nowhere.at_all=1"):
        pass


def test_a_variant_argument_names_its_settings():
    assert common.variant("margin:mlxd.engine.speculation._MARGIN=1.2; a.b=2") == (
        "margin", "mlxd.engine.speculation._MARGIN=1.2; a.b=2")
    for bad in ("margin", ":a.b=1", "margin:a.b"):
        with pytest.raises(SystemExit, match="expected NAME:module.attribute=value"):
            common.variant(bad)
