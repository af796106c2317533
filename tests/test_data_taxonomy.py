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


def test_cli_lists_the_taxonomy(capsys):
    import json

    from defect_glm import main

    assert main(["data", "classes", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["columns"] == ["Center", "Donut", "Edge_Loc", "Edge_Ring", "Loc", "Near_Full", "Scratch", "Random"]
    assert [c["name"] for c in payload["classes"]] == list(tx.CLASS_NAMES)
    edge_loc = payload["patterns"][2]
    assert edge_loc["chinese"] == "边缘局部" and {"el", "edge loc"} <= set(edge_loc["aliases"])
    assert "dount" in payload["patterns"][1]["aliases"]
    assert len(payload["rules"]) == 4
    assert main(["data", "classes"]) == 0
    table = capsys.readouterr().out
    assert "38 classes" in table and "00100010  Edge_Loc+Scratch" in table and "中心+边缘局部" in table


def test_cli_lookup_resolves_aliases_and_refuses_impossible_classes(capsys):
    import json

    from defect_glm import main

    assert main(["data", "classes", "--lookup", "Dount + EL", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["name"] == "Donut+Edge_Loc" and found["multi_hot"] == [0, 1, 1, 0, 0, 0, 0, 0]
    assert found["chinese"] == "环形+边缘局部"
    assert main(["data", "classes", "--lookup", "Near-full+Scratch"]) == 2
    assert "Near-full only occurs alone" in capsys.readouterr().err
    assert main(["data", "classes", "--lookup", "Blob"]) == 2
    assert "unknown defect pattern 'Blob'" in capsys.readouterr().err


def test_real_labels_obey_the_rules(real_mixedwm38):
    labels = np.load(real_mixedwm38)["arr_1"]
    rows, counts = np.unique(labels, axis=0, return_counts=True)
    names = {tx.class_name(row) for row in rows}
    assert names == set(tx.CLASS_NAMES) and len(rows) == 38 and counts.min() > 50
