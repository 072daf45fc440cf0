"""The dashboard's views, one module per tab, in the order the tabs appear.

Each module has `LABEL` (the tab's label, also its `?view=` query parameter)
and `render(source, view)`, which reads through `serialmon.dashboard.data`
and draws into the current container.
"""

from __future__ import annotations

from serialmon.dashboard.views import alerts, categories, database, failures, overview, quality, recent, trends

VIEWS = (overview, quality, categories, trends, failures, recent, database, alerts)

__all__ = ["VIEWS"]
