"""Quality parsing of serialized_content in every layout the table holds."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serialmon.quality import parse_quality


def feature(type_id, elements=1, type_name=None):
    return {
        "id": 1, "type_id": type_id, "type": type_name,
        "element_tree": {"elements": [{"id": i} for i in range(elements)], "element_count": elements},
    }


def test_quality_block_is_read_as_is():
    quality = parse_quality({"serialization_quality": {
        "total_features": 10, "features_with_elements": 8, "element_coverage": 88.9,
        "group_features": 1, "analysis_features": 0, "recoverable_unknown": 1, "unrecoverable_unknown": 2,
    }})
    assert quality.known
    assert quality.source == "serialization_quality"
    assert quality.element_coverage == 88.9
    assert quality.unrecoverable_unknown == 2


def test_top_level_coverage_is_legacy_layout():
    quality = parse_quality({"element_coverage": 42, "features": [feature(917), feature(918, 0)]})
    assert quality.known
    assert quality.source == "top_level"
    assert quality.element_coverage == 42.0
    assert quality.total_features == 2


def test_coverage_derived_from_features_ignores_groups_and_analysis():
    features = [feature(917), feature(918, 0), feature(1104, 0), feature(1232, 0), feature(9999, 0), feature(9998)]
    quality = parse_quality({"features": features})
    assert quality.source == "features"
    # meaningful: 917, 918, 9999, 9998 -> with elements: 917 and 9998
    assert quality.element_coverage == 50.0
    assert quality.group_features == 1
    assert quality.analysis_features == 1
    assert quality.unrecoverable_unknown == 1
    assert quality.recoverable_unknown == 1


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "NULL"),
        ([1, 2], "array"),
        ("not json", "not valid JSON"),
        ({"serialization_quality": {"element_coverage": "95"}}, "string"),
        ({"serialization_quality": {"element_coverage": 130}}, "outside 0-100"),
        ({"serialization_quality": {"element_coverage": -1}}, "outside 0-100"),
        ({"serialization_quality": {"element_coverage": 50, "total_features": -3}}, "non-negative"),
        ({"serialization_quality": {"element_coverage": float("nan")}}, "finite"),
        ({"serialization_quality": "good"}, "not an object"),
        ({"features": "many"}, "not an array"),
        ({"model_name": "x.prt"}, "no serialization_quality"),
        ({"features": [feature(1104)]}, "no meaningful features"),
    ],
)
def test_unreadable_content_is_quality_unknown(content, reason):
    quality = parse_quality(content)
    assert quality.known is False
    assert reason in quality.reason
    assert quality.element_coverage is None


def test_json_text_is_parsed():
    assert parse_quality(json.dumps({"element_coverage": 75.5})).element_coverage == 75.5


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["serialization_quality", "element_coverage", "features", "element_tree", "elements",
                         "element_count", "type_id", "type", "total_features", "features_with_elements",
                         "group_features", "unrecoverable_unknown", "x"]),
        children, max_size=6),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_parse_quality_never_raises(value):
    quality = parse_quality(value)
    if quality.known:
        assert quality.element_coverage is not None
        assert 0.0 <= quality.element_coverage <= 100.0
        assert math.isfinite(quality.element_coverage)
    else:
        assert quality.reason
