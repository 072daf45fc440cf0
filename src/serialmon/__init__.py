"""serialmon: monitoring for a pipeline that serializes CAD models into PostgreSQL.

    from serialmon import get_serialize_metrics_collector, get_db_monitor, get_alert_manager

The names match the earlier in-house modules (`pybase.services.serialize_metrics`,
`db_monitor`, `serialize_alerts`), so adopting serialmon is an import change.
Attributes load on first use, so `import serialmon` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "SerializeMetricsCollector": "serialmon.collector",
    "get_serialize_metrics_collector": "serialmon.collector",
    "DatabaseMonitor": "serialmon.monitor",
    "get_db_monitor": "serialmon.monitor",
    "AlertManager": "serialmon.alerts",
    "get_alert_manager": "serialmon.alerts",
    "Settings": "serialmon.config",
    "get_settings": "serialmon.config",
    "parse_quality": "serialmon.quality",
    "Quality": "serialmon.quality",
    "init_db": "serialmon.schema",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'serialmon' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
