"""The defect taxonomy: 38 classes, names, aliases, multi-hot conversion and the rules of the data."""

from __future__ import annotations

import numpy as np
import pytest

from data_tools import taxonomy as tx


def test_class_counts_match_mixedwm38():
    orders = [c.order for c in tx.CLASSES]
    assert len(tx.CLASSES) == 38
    assert [orders.count(k) for k in range(5)] == [1, 8, 13, 12, 4]
    assert len(set(tx.CLASS_NAMES)) == 38
    assert "Normal" in tx.CLASS_NAMES and "Center+Edge_Loc+Scratch" in tx.CLASS_NAMES


def test_defect_glm_protocol_excludes_near_full_and_random():
    assert len(tx.DEFECT_GLM_36) == 36
    assert "Near_Full" not in tx.DEFECT_GLM_36 and "Random" not in tx.DEFECT_GLM_36


@pytest.mark.parametrize(
    ("alias", "key"),
    [
        ("Edge_Loc", "Edge_Loc"), ("Edge-Loc", "Edge_Loc"), ("EL", "Edge_Loc"), ("edge loc", "Edge_Loc"),
        ("Dount", "Donut"), ("donut", "Donut"), ("Near-full", "Near_Full"), ("nearfull", "Near_Full"),
        ("Edge-Ring", "Edge_Ring"), ("划痕", "Scratch"), ("中心", "Center"), ("随机", "Random"),
        ("  LOC ", "Loc"), ("centre", "Center"),
    ],
)
def test_aliases_resolve(alias, key):
    assert tx.pattern_key(alias) == key


def test_unknown_pattern_error_lists_choices():
    with pytest.raises(ValueError, match=r"unknown defect pattern 'Blob'.*Center"):
        tx.pattern_key("Blob")


def test_multi_hot_round_trip_for_every_class():
    for c in tx.CLASSES:
        vec = c.multi_hot
        assert vec.dtype == np.int32 and vec.shape == (8,)
        assert tx.from_multi_hot(vec) == c.patterns
        assert tx.class_of(vec) == c
        assert tx.parse_class_name(c.name) == c


def test_multi_hot_column_order():
    assert tx.to_multi_hot(["Center", "Scratch"]).tolist() == [1, 0, 0, 0, 0, 0, 1, 0]
    assert tx.from_multi_hot([0, 0, 0, 0, 0, 0, 0, 1]) == ("Random",)
    with pytest.raises(ValueError, match="needs 8 entries"):
        tx.from_multi_hot([1, 0, 0])


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        (["Center", "Donut"], "never occur together"),
        (["Edge_Loc", "Edge_Ring"], "never occur together"),
        (["Near_Full", "Scratch"], "only occurs alone"),
        (["Random", "Loc"], "only occurs alone"),
    ],
)
def test_rules_of_the_data(names, problem):
    assert not tx.is_valid_combination(names)
    with pytest.raises(ValueError, match=problem):
        tx.class_of(names)


def test_names_in_both_languages():
    c = tx.parse_class_name("C+EL+S")
    assert c.name == "Center+Edge_Loc+Scratch"
    assert c.english == "Center + Edge-Loc + Scratch"
    assert c.chinese == "中心+边缘局部+划痕"
    assert tx.display_names(["Scratch", "Center"], "zh") == ["中心", "划痕"]
    assert tx.parse_class_name("Normal").name == "Normal" and tx.parse_class_name("正常").patterns == ()
