"""The read model: the one set of queries behind every figure that serialmon shows.

The CLI, the dashboard, the exporter and the alert rules all read through
these functions, so the same number is the same everywhere. Each function
takes a synchronous SQLAlchemy `Connection`, the `Settings` and optional
`Filters`, and returns plain JSON-serialisable dicts and lists (datetimes as
ISO 8601 text in UTC). Async callers run them with `serialmon.db.arun`:

    from serialmon.db import arun
    from serialmon.readmodel import Filters, get_snapshot

    snapshot = await arun(session, lambda conn: get_snapshot(conn, settings, minutes=60))

Event figures read `serialization_events`; quality figures read the ledger
`model_quality` (see `serialmon.ledger`), never `serialized_content`.
"""

from __future__ import annotations

from serialmon.readmodel.batches import batches
from serialmon.readmodel.dashboard import (
    data_extent, failure_examples, filter_options, size_history, window_filters, worst_models,
)
from serialmon.readmodel.failures import failure_groups
from serialmon.readmodel.filters import MODEL_TYPES, Filters
from serialmon.readmodel.quality import quality_summary
from serialmon.readmodel.runs import attempt_counts, category_breakdown, overview, recent_models, trends
from serialmon.readmodel.snapshot import get_snapshot, snapshot_window
from serialmon.readmodel.workers import workers

__all__ = [
    "MODEL_TYPES",
    "Filters",
    "attempt_counts",
    "batches",
    "category_breakdown",
    "data_extent",
    "failure_examples",
    "failure_groups",
    "filter_options",
    "get_snapshot",
    "overview",
    "quality_summary",
    "recent_models",
    "size_history",
    "snapshot_window",
    "trends",
    "window_filters",
    "workers",
    "worst_models",
]
