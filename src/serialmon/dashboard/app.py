"""serialmon's Streamlit dashboard: run health, quality, failures and database health at a glance.

Start it with `serialmon dashboard` (bound to 127.0.0.1), or directly:

    streamlit run src/serialmon/dashboard/app.py --server.address 127.0.0.1

The settings come from the environment and `.env` like every serialmon
command (`MODEL_DATA_DB_URL` / `DATABASE_URL`, `SERIALMON_*`). Every figure is
read through `serialmon.dashboard.data`, which contains no SQL.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from serialmon.config import get_settings
from serialmon.dashboard import data, sidebar
from serialmon.dashboard import formatting as fmt
from serialmon.dashboard.views import VIEWS
from serialmon.errors import SettingsError

VIEW_KEY = "view"  # the selected tab; also the `?view=` query parameter
_PROBLEM_KEY = "problem"  # set while the database cannot be read, so its return redraws the whole page
_OPTIONS_PROBLEM_KEY = "options_problem"  # the sidebar's failed read, handed to the body of the same run

EMPTY_STATE = """
**No data yet.** The database has no serialization events and the monitored table has no rows.

Fill it with a simulated run:

```
serialmon init --create-models-table
serialmon simulate --count 500
```

or record your pipeline through the collector
(`get_serialize_metrics_collector().record_serialization(...)`, see docs/collector.md).
This page shows the figures as soon as they arrive.
"""


def main() -> None:
    """Draw the page: the sidebar, then the views inside a fragment that auto-refresh reruns."""
    st.set_page_config(page_title="serialmon", page_icon=":material/monitoring:", layout="wide")
    try:
        settings = get_settings()
    except SettingsError as error:
        show_problem(data.describe_problem(error, None))
        return
    source = data.source_for(settings)

    categories = None
    try:
        categories = data.load_options(source.fingerprint, settings)["categories"]
    except data.DATA_ERRORS as error:
        # The body shows this problem instead of waiting a second time on the same unreachable server.
        st.session_state[_OPTIONS_PROBLEM_KEY] = data.describe_problem(error, settings)
    view, refresh = sidebar.render(categories, data.describe_database(settings))
    if refresh.now:
        data.clear_cache()

    st.fragment(run_every=refresh.interval_sec)(body)(source, view)


def body(source: data.Source, view: data.ViewFilters) -> None:
    """Draw the header and the selected view; on a data error, the problem banner instead.

    Runs as a fragment, so auto-refresh reruns only this part. When the
    database returns after a problem, the whole page reruns so the sidebar
    reads its choices again.
    """
    header = st.container()
    banner = st.empty()
    # Set by this script run's sidebar only: a later auto-refresh of this fragment tries the database again.
    sidebar_problem = st.session_state.pop(_OPTIONS_PROBLEM_KEY, None)
    if sidebar_problem is not None:
        st.session_state[_PROBLEM_KEY] = sidebar_problem.kind
        with banner.container():
            show_problem(sidebar_problem)
        return

    try:
        extent = data.load_extent(source.fingerprint, source.settings)
        if _is_empty(source, view, extent):
            _header(header, view, extent)
            banner.info(EMPTY_STATE)
            return
        _header(header, view, extent)
        _views(source, view)
    except data.DATA_ERRORS as error:
        problem = data.describe_problem(error, source.settings)
        st.session_state[_PROBLEM_KEY] = problem.kind
        with banner.container():
            show_problem(problem)
        return

    if st.session_state.pop(_PROBLEM_KEY, None) is not None:
        st.rerun(scope="app")


def _is_empty(source: data.Source, view: data.ViewFilters, extent: dict[str, Any]) -> bool:
    """Return True when there is no event and no table row at all (whatever the filters)."""
    if extent["first_event_at"] is not None or extent["ledger_rows"]:
        return False
    # The ledger may simply not be refreshed yet: the snapshot refreshes it first.
    snapshot = data.load_snapshot(source.fingerprint, source.settings, view)
    return snapshot["ledger"]["rows"] == 0 and snapshot["attempts"] == 0


def _header(container: Any, view: data.ViewFilters, extent: dict[str, Any]) -> None:
    if view.range_minutes is not None:
        scope = next(name for name, minutes in data.TIME_RANGES.items() if minutes == view.range_minutes)
    else:
        scope = f"{fmt.utc_time(view.since)} to {fmt.utc_time(view.until)}"
    filters = "; ".join(f"{name}: {value}" for name, value in view.active.items()) or "no filter"
    container.caption(
        f"**{scope}** · {filters} · latest event {fmt.utc_time(extent['last_event_at'])} · "
        f"figures are at most {data.CACHE_TTL_SEC} s old"
    )


def _views(source: data.Source, view: data.ViewFilters) -> None:
    """Draw one tab per view; only the selected tab's view runs its queries."""
    labels = [module.LABEL for module in VIEWS]
    tabs = st.tabs(labels, key=VIEW_KEY, on_change="rerun", bind="query-params")
    for tab, module in zip(tabs, VIEWS):
        # `open` is None when tabs do not track state: every view is drawn then.
        if tab.open is False:
            continue
        with tab:
            module.render(source, view)


def show_problem(problem: data.Problem) -> None:
    """Draw the banner of a problem: what failed, the cause, and the fix."""
    st.error(f"**{problem.title}.** {problem.cause}", icon=":material/error:")
    if problem.fix:
        st.info(f"**Fix:** {problem.fix}", icon=":material/build:")
    if problem.kind == "unavailable":
        st.caption("The page tries again on every refresh and recovers by itself when the database is back.")


main()
