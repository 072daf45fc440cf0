"""Alerts: rules over the read model, a stored state machine, and notifications through an outbox.

    from serialmon import get_alert_manager

    result = await get_alert_manager().process_alerts()

See `AlertManager` for the API and docs/alerts.md for the rules and settings.
"""

from __future__ import annotations

import threading

from serialmon.alerts.manager import AlertManager
from serialmon.alerts.rules import Finding, Rule, default_rules

_manager: AlertManager | None = None
_manager_lock = threading.Lock()


def get_alert_manager() -> AlertManager:
    """Return the process-wide `AlertManager` (created on first use; it reads the current settings at each call)."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = AlertManager()
        return _manager


__all__ = ["AlertManager", "Finding", "Rule", "default_rules", "get_alert_manager"]
