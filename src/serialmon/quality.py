"""Extraction quality of one serialized model, read from its `serialized_content`.

Rows come in three layouts: the current one with a `serialization_quality`
object, an older one with `element_coverage` at the top level, and rows with
neither, whose coverage is derived from `features`. Any value that cannot be
read (NULL, not an object, a string where a number belongs, NaN, a negative
count, a coverage outside 0-100) gives "quality unknown" with a short reason.
`parse_quality()` never raises.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

# Creo feature type ids seen in the pipeline.
FEATURE_TYPES: dict[int, str] = {
    916: "DATUM_SURFACE", 917: "PROTRUSION", 918: "CUT", 919: "HOLE", 920: "ROUND", 921: "CHAMFER",
    922: "DRAFT", 923: "DATUM_PLANE", 924: "DATUM_AXIS", 925: "DATUM_POINT", 926: "DATUM_CURVE",
    931: "FPNT", 942: "SWEEP", 946: "CURVE", 949: "SKETCH", 979: "CSYS", 984: "DATUM_SURFACE",
    989: "COPY_GEOM", 1084: "PATTERN", 1085: "MEASURE", 1104: "GROUP", 1232: "ANALYSIS", 1243: "SURFACE",
}
GROUP_TYPE_ID = 1104
ANALYSIS_TYPE_ID = 1232
_NOT_MEANINGFUL_NAMES = {"GROUP", "ANALYSIS"}

COUNT_FIELDS = (
    "total_features", "features_with_elements", "group_features", "analysis_features",
    "recoverable_unknown", "unrecoverable_unknown",
)


@dataclass(frozen=True)
class Quality:
    """Quality fields of one model; `known` is False when they could not be read, with `reason` saying why."""

    known: bool
    reason: str | None = None
    source: str | None = None  # "serialization_quality", "top_level" or "features"
    element_coverage: float | None = None  # percent, 0-100
    total_features: int | None = None
    features_with_elements: int | None = None
    group_features: int | None = None
    analysis_features: int | None = None
    recoverable_unknown: int | None = None
    unrecoverable_unknown: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Unreadable(Exception):
    """A field of the content cannot be read; its message is the reason."""


def unknown(reason: str) -> Quality:
    return Quality(known=False, reason=reason)


def parse_quality(content: Any) -> Quality:
    """Return the quality of one `serialized_content` value (a dict, JSON text, or None).

    Never raises: anything unreadable gives `Quality(known=False, reason=...)`.
    """
    try:
        return _parse(content)
    except _Unreadable as error:
        return unknown(str(error))
    except (TypeError, ValueError, AttributeError, RecursionError, OverflowError) as error:
        return unknown(f"unreadable content ({type(error).__name__})")


def _parse(content: Any) -> Quality:
    if content is None:
        return unknown("serialized_content is NULL")
    if isinstance(content, (str, bytes, bytearray)):
        try:
            content = json.loads(content)
        except ValueError:
            return unknown("serialized_content is not valid JSON")
    if not isinstance(content, dict):
        return unknown(f"serialized_content is a JSON {_json_kind(content)}, not an object")

    quality = content.get("serialization_quality")
    if isinstance(quality, dict):
        return _from_quality_object(quality, content)
    if quality is not None:
        return unknown(f"serialization_quality is a JSON {_json_kind(quality)}, not an object")

    if "element_coverage" in content:
        coverage = _coverage(content["element_coverage"], "element_coverage")
        counts = _counts_from_features(content["features"]) if isinstance(content.get("features"), list) else {}
        return Quality(known=True, source="top_level", element_coverage=coverage, **counts)

    features = content.get("features")
    if isinstance(features, list):
        counts = _counts_from_features(features)
        coverage = _derived_coverage(counts)
        if coverage is None:
            return unknown("no meaningful features to measure coverage on")
        return Quality(known=True, source="features", element_coverage=coverage, **counts)
    if features is not None:
        return unknown(f"features is a JSON {_json_kind(features)}, not an array")
    return unknown("no serialization_quality, element_coverage or features")


def _from_quality_object(quality: dict, content: dict) -> Quality:
    counts = {name: _count(quality.get(name), name) for name in COUNT_FIELDS}
    total = counts["total_features"]
    with_elements = counts["features_with_elements"]
    if total is not None and with_elements is not None and with_elements > total:
        raise _Unreadable(f"features_with_elements ({with_elements}) exceeds total_features ({total})")

    if quality.get("element_coverage") is not None:
        coverage = _coverage(quality["element_coverage"], "element_coverage")
    else:
        coverage = _derived_coverage(counts)
        if coverage is None and isinstance(content.get("features"), list):
            coverage = _derived_coverage(_counts_from_features(content["features"]))
        if coverage is None:
            raise _Unreadable("serialization_quality has no element_coverage and it cannot be derived")
    return Quality(known=True, source="serialization_quality", element_coverage=coverage, **counts)


def _counts_from_features(features: list) -> dict[str, int]:
    counts = dict.fromkeys(COUNT_FIELDS, 0)
    for feature in features:
        if not isinstance(feature, dict):
            raise _Unreadable(f"a feature is a JSON {_json_kind(feature)}, not an object")
        counts["total_features"] += 1
        has_elements = _has_elements(feature.get("element_tree"))
        type_id = feature.get("type_id")
        type_name = feature.get("type")
        if type_id == GROUP_TYPE_ID or type_name == "GROUP":
            counts["group_features"] += 1
        elif type_id == ANALYSIS_TYPE_ID or type_name == "ANALYSIS":
            counts["analysis_features"] += 1
        elif _is_unknown_type(type_id, type_name):
            counts["recoverable_unknown" if has_elements else "unrecoverable_unknown"] += 1
        if has_elements:
            counts["features_with_elements"] += 1
    return counts


def _derived_coverage(counts: dict[str, int | None]) -> float | None:
    """Percent of meaningful features (not groups, not analysis) that have elements."""
    total = counts.get("total_features")
    with_elements = counts.get("features_with_elements")
    if total is None or with_elements is None:
        return None
    meaningful = total - (counts.get("group_features") or 0) - (counts.get("analysis_features") or 0)
    if meaningful <= 0:
        return None
    return round(min(100.0, 100.0 * with_elements / meaningful), 4)


def _has_elements(tree: Any) -> bool:
    if not isinstance(tree, dict):
        return False
    count = tree.get("element_count")
    if isinstance(count, (int, float)) and not isinstance(count, bool) and math.isfinite(count) and count > 0:
        return True
    elements = tree.get("elements")
    return isinstance(elements, list) and len(elements) > 0


def _is_unknown_type(type_id: Any, type_name: Any) -> bool:
    if isinstance(type_id, int) and not isinstance(type_id, bool) and type_id in FEATURE_TYPES:
        return False
    if isinstance(type_name, str) and type_name and type_name.upper() != "UNKNOWN" and type_id is None:
        return False
    return True


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Unreadable(f"{name} is a JSON {_json_kind(value)}, not a number")
    number = float(value)
    if not math.isfinite(number):
        raise _Unreadable(f"{name} is not a finite number")
    return number


def _coverage(value: Any, name: str) -> float:
    coverage = _number(value, name)
    if not 0.0 <= coverage <= 100.0:
        raise _Unreadable(f"{name} {coverage:g} is outside 0-100")
    return coverage


def _count(value: Any, name: str) -> int | None:
    if value is None:
        return None
    number = _number(value, name)
    if number < 0 or number != int(number):
        raise _Unreadable(f"{name} {number:g} is not a non-negative integer")
    return int(number)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
