"""Extraction-quality figures, read from the ledger (`model_quality`), never from `serialized_content`.

The ledger contains one row per row of the monitored table, so these figures
describe the table as it is now, as of the last ledger refresh. Time filters
do not apply to them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from serialmon.config import Settings
from serialmon.ledger import ledger_state
from serialmon.readmodel.filters import Filters, check_limit, statement

HISTOGRAM_BUCKETS = 10  # coverage buckets of 10 percentage points
REASONS_MAX = 1_000

# One pass over the ledger, grouped by category, coverage bucket and unknown
# reason. The quality summary, the histogram, the unknown reasons and the
# per-category coverage are all sums of these groups. Bucket i (1-10) contains
# coverage in [10(i-1), 10i) and bucket 10 also 100. Models whose quality is
# unknown have the bucket NULL and a reason.
_LEDGER_GROUPS_SQL = """
    WITH ledger AS ({filtered_ledger})
    SELECT
        category,
        CASE WHEN element_coverage IS NOT NULL THEN least(width_bucket(element_coverage, 0, 100, 10), 10) END
            AS bucket,
        CASE WHEN NOT quality_known THEN quality_reason END AS reason,
        count(*) AS models,
        count(*) FILTER (WHERE NOT quality_known) AS quality_unknown,
        count(element_coverage) AS with_coverage,
        coalesce(sum(element_coverage), 0) AS coverage_sum,
        min(element_coverage) AS coverage_min,
        count(*) FILTER (WHERE element_coverage < :coverage_warning) AS below_warning,
        count(*) FILTER (WHERE element_coverage < :coverage_critical) AS below_critical,
        coalesce(sum(unrecoverable_unknown), 0) AS unrecoverable_unknown,
        count(*) FILTER (WHERE unrecoverable_unknown > 0) AS models_with_unrecoverable_unknown,
        coalesce(sum(recoverable_unknown), 0) AS recoverable_unknown,
        CAST(coalesce(sum(content_bytes), 0) AS bigint) AS content_bytes,
        min(model_name) AS example_model
    FROM ledger
    GROUP BY 1, 2, 3
"""


def read_ledger_groups(conn: Connection, settings: Settings, filters: Filters | None = None) -> list[Any]:
    """Return the ledger rows that match the filters, aggregated by category, coverage bucket and unknown reason."""
    filters = filters or Filters()
    params = {
        **filters.params(),
        "coverage_warning": settings.coverage_warning,
        "coverage_critical": settings.coverage_critical,
    }
    return list(conn.execute(statement(settings, _LEDGER_GROUPS_SQL), params))


def quality_summary(
    conn: Connection, settings: Settings, filters: Filters | None = None, *, reasons_limit: int = 5
) -> dict[str, Any]:
    """Return the extraction quality of the models in the ledger that match the filters.

    Keys: `table_models` (ledger rows), `quality_known`, `quality_unknown`
    (models whose quality could not be read), `avg_element_coverage` and
    `min_element_coverage` (percent, over models of known quality; None when
    there is none), `below_warning` / `below_critical` (models with coverage
    under `coverage_warning` / `coverage_critical`, which are echoed as
    `coverage_warning` / `coverage_critical`), `unrecoverable_unknown` (sum of
    unknown features without element data, which cannot be recreated),
    `models_with_unrecoverable_unknown`, `recoverable_unknown` (sum),
    `content_bytes` (sum of stored, possibly compressed, `serialized_content`
    sizes), `unknown_reasons` (up to `reasons_limit` of [{reason, models,
    example_model}], most frequent first, the example being the first name in
    sort order), `coverage_histogram` (10 buckets
    [{bucket_start, bucket_end, models}], the last one including 100) and
    `ledger_refreshed_at` (ISO 8601, None before the first refresh).
    """
    check_limit("reasons_limit", reasons_limit, REASONS_MAX)
    filters = filters or Filters()
    return summarize_quality(conn, settings, read_ledger_groups(conn, settings, filters), reasons_limit)


def summarize_quality(
    conn: Connection, settings: Settings, groups: list[Any], reasons_limit: int = 5
) -> dict[str, Any]:
    """Build the `quality_summary()` dict from `read_ledger_groups()` rows and the ledger's state."""
    check_limit("reasons_limit", reasons_limit, REASONS_MAX)

    def total(column: str) -> int:
        return sum(getattr(group, column) for group in groups)

    with_coverage = total("with_coverage")
    minimums = [group.coverage_min for group in groups if group.coverage_min is not None]
    by_bucket: dict[int, int] = {}
    for group in groups:
        if group.bucket is not None:
            by_bucket[group.bucket] = by_bucket.get(group.bucket, 0) + group.models
    reasons: dict[str, dict[str, Any]] = {}
    for group in groups:
        if group.reason is None:
            continue
        entry = reasons.setdefault(group.reason, {"reason": group.reason, "models": 0, "example_model": None})
        entry["models"] += group.quality_unknown
        if entry["example_model"] is None or group.example_model < entry["example_model"]:
            entry["example_model"] = group.example_model
    most_frequent = sorted(reasons.values(), key=lambda entry: (-entry["models"], entry["reason"]))

    width = 100 // HISTOGRAM_BUCKETS
    histogram = [
        {"bucket_start": (bucket - 1) * width, "bucket_end": bucket * width, "models": by_bucket.get(bucket, 0)}
        for bucket in range(1, HISTOGRAM_BUCKETS + 1)
    ]

    return {
        "table_models": total("models"),
        "quality_known": total("models") - total("quality_unknown"),
        "quality_unknown": total("quality_unknown"),
        "avg_element_coverage": total("coverage_sum") / with_coverage if with_coverage else None,
        "min_element_coverage": min(minimums) if minimums else None,
        "coverage_warning": settings.coverage_warning,
        "coverage_critical": settings.coverage_critical,
        "below_warning": total("below_warning"),
        "below_critical": total("below_critical"),
        "unrecoverable_unknown": total("unrecoverable_unknown"),
        "models_with_unrecoverable_unknown": total("models_with_unrecoverable_unknown"),
        "recoverable_unknown": total("recoverable_unknown"),
        "content_bytes": total("content_bytes"),
        "unknown_reasons": most_frequent[:reasons_limit],
        "coverage_histogram": histogram,
        "ledger_refreshed_at": ledger_state(conn, settings)["refreshed_at"],
    }


def coverage_by_category(groups: list[Any]) -> dict[str | None, dict[str, Any]]:
    """Return {category: {table_models, avg_element_coverage, below_warning, quality_unknown}} from ledger groups."""
    sums: dict[str | None, dict[str, float]] = {}
    for group in groups:
        entry = sums.setdefault(
            group.category,
            {"table_models": 0, "with_coverage": 0, "coverage_sum": 0.0, "below_warning": 0, "quality_unknown": 0},
        )
        entry["table_models"] += group.models
        entry["with_coverage"] += group.with_coverage
        entry["coverage_sum"] += group.coverage_sum
        entry["below_warning"] += group.below_warning
        entry["quality_unknown"] += group.quality_unknown
    return {
        category: {
            "table_models": entry["table_models"],
            "avg_element_coverage": entry["coverage_sum"] / entry["with_coverage"] if entry["with_coverage"] else None,
            "below_warning": entry["below_warning"],
            "quality_unknown": entry["quality_unknown"],
        }
        for category, entry in sums.items()
    }
