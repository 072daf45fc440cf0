"""The Streamlit dashboard: `serialmon dashboard`, or `streamlit run` on `APP_PATH`.

Every figure comes from the read model, the database monitor and the alert
manager (`serialmon.dashboard.data`); the dashboard contains no SQL.
"""

from __future__ import annotations

from pathlib import Path

APP_PATH = Path(__file__).resolve().with_name("app.py")

__all__ = ["APP_PATH"]
