"""Quality: element coverage of the models in the table, the models below the thresholds, the worst models."""

from __future__ import annotations

import streamlit as st

from serialmon.dashboard import charts
from serialmon.dashboard import formatting as fmt
from serialmon.dashboard.data import Source, ViewFilters, load_snapshot, load_worst_models
from serialmon.dashboard.styles import style_coverage, styler

LABEL = "Quality"


def render(source: Source, view: ViewFilters) -> None:
    """Draw the quality summary (`get_snapshot()["quality"]`) and `worst_models()`, both from the ledger."""
    snapshot = load_snapshot(source.fingerprint, source.settings, view)
    quality = snapshot["quality"]
    warning, critical = quality["coverage_warning"], quality["coverage_critical"]
    st.caption(
        "From the quality ledger (one row per model in the table, refreshed "
        f"{fmt.utc_time(quality['ledger_refreshed_at'])}). The time range does not apply: "
        "these figures describe the table as it is now."
    )

    first, second = st.columns(4), st.columns(4)
    first[0].metric("Models in the table", fmt.count(quality["table_models"]), border=True)
    first[1].metric(
        "Average element coverage", fmt.percent(quality["avg_element_coverage"]), border=True,
        help=f"Lowest: {fmt.percent(quality['min_element_coverage'])}.",
    )
    first[2].metric(f"Below {warning:g} %", fmt.count(quality["below_warning"]), border=True,
                    help="Models under the coverage warning threshold.")
    first[3].metric(f"Below {critical:g} %", fmt.count(quality["below_critical"]), border=True,
                    help="Models under the coverage critical threshold.")
    second[0].metric(
        "Unrecoverable unknown features", fmt.count(quality["unrecoverable_unknown"]), border=True,
        help="Unknown feature types without element data: these features cannot be recreated.",
    )
    second[1].metric(
        "Models with unrecoverable unknowns", fmt.count(quality["models_with_unrecoverable_unknown"]), border=True
    )
    second[2].metric("Recoverable unknown features", fmt.count(quality["recoverable_unknown"]), border=True)
    second[3].metric(
        "Quality unknown", fmt.count(quality["quality_unknown"]), border=True,
        help="Rows whose serialization quality could not be read (missing, malformed or legacy content).",
    )

    if quality["table_models"] == 0:
        st.info("No model in the table matches these filters.")
        return
    st.plotly_chart(charts.coverage_histogram(quality["coverage_histogram"], warning, critical), key="coverage_hist")

    st.subheader("Worst models")
    worst = load_worst_models(source.fingerprint, source.settings, view)
    frame = fmt.table(worst, {
        "model_name": "model", "model_type": "type", "category": "category",
        "element_coverage": "coverage %", "total_features": "features",
        "features_with_elements": "with elements", "unrecoverable_unknown": "unrecoverable unknown",
        "recoverable_unknown": "recoverable unknown", "quality_source": "quality source",
        "model_updated_at": "updated",
    })
    st.dataframe(
        style_coverage(frame, ["coverage %"], warning, critical),
        hide_index=True, key="worst_models",
    )

    if quality["unknown_reasons"]:
        st.subheader("Why quality is unknown")
        frame = fmt.table(
            quality["unknown_reasons"], {"reason": "reason", "models": "models", "example_model": "example"}
        )
        st.dataframe(styler(frame), hide_index=True, key="unknown_reasons")
