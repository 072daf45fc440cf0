"""Settings from the environment, a `.env` file and defaults.

The pipeline's own variables keep their names (`MODEL_DATA_DB_URL`, which wins
over `DATABASE_URL`, and the `SMTP_*` / `ALERT_*` mail settings); everything
else is `SERIALMON_<FIELD>`. Invalid values raise `SettingsError` with one line
that names the variable and the value.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

from platformdirs import user_data_path
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from serialmon.errors import SettingsError

logger = logging.getLogger(__name__)

DATA_DIR = user_data_path("serialmon", appauthor=False)

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_EMAIL = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+$")
_IDENTIFIER_MAX = 63  # PostgreSQL's NAMEDATALEN - 1


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Every setting serialmon reads; build it with `get_settings()`."""

    model_config = SettingsConfigDict(
        env_prefix="SERIALMON_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        case_sensitive=False,
        allow_inf_nan=False,
    )

    # Database
    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=_env("MODEL_DATA_DB_URL", "DATABASE_URL", "SERIALMON_DATABASE_URL"),
        description="PostgreSQL URL; none starts the embedded server",
    )
    db_sslmode: str | None = Field(default=None, description="libpq sslmode added to the URL")
    state_schema: str = Field(default="serialmon", description="schema of serialmon's own tables")
    models_schema: str = Field(default="public", description="schema of the monitored table")
    models_table: str = Field(default="serialized_models", description="monitored table")
    application_name: str = Field(default="serialmon", description="application_name of every connection")
    statement_timeout_ms: int = Field(default=15_000, ge=0, le=86_400_000, description="statement_timeout of every connection")
    lock_timeout_ms: int = Field(default=1_000, ge=0, le=86_400_000, description="lock_timeout of every connection")
    connect_timeout_sec: int = Field(default=5, ge=1, le=300, description="TCP connect timeout")
    data_dir: Path = Field(default=DATA_DIR, description="embedded server, journal and outbox live here")

    # Mail
    smtp_host: str | None = Field(default=None, validation_alias=_env("SMTP_HOST", "SERIALMON_SMTP_HOST"))
    smtp_port: int = Field(default=587, ge=1, le=65535, validation_alias=_env("SMTP_PORT", "SERIALMON_SMTP_PORT"))
    smtp_user: str | None = Field(default=None, validation_alias=_env("SMTP_USER", "SERIALMON_SMTP_USER"))
    smtp_password: SecretStr | None = Field(
        default=None, validation_alias=_env("SMTP_PASSWORD", "SERIALMON_SMTP_PASSWORD")
    )
    smtp_security: Literal["auto", "starttls", "tls", "plain"] = Field(
        default="auto", description="auto: implicit TLS on 465, STARTTLS otherwise"
    )
    smtp_allow_plain: bool = Field(default=False, description="allow SMTP without TLS")
    smtp_timeout_sec: float = Field(default=10.0, gt=0, le=300)
    alert_from_email: str = Field(
        default="serialmon@localhost", validation_alias=_env("ALERT_FROM_EMAIL", "SERIALMON_ALERT_FROM_EMAIL")
    )
    alert_to_emails: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=_env("ALERT_TO_EMAILS", "SERIALMON_ALERT_TO_EMAILS")
    )
    webhook_url: SecretStr | None = Field(default=None, description="optional JSON webhook (Slack-compatible)")
    webhook_timeout_sec: float = Field(default=10.0, gt=0, le=300)
    smtp_ca_file: Path | None = Field(default=None, description="PEM CA bundle that verifies the SMTP server")
    outbox_dir: Path | None = Field(default=None, description="where .eml files go without SMTP")

    # Collector
    journal_dir: Path | None = Field(default=None, description="local journal for unsent events")
    queue_size: int = Field(default=50_000, ge=100, le=10_000_000)
    writer_batch_size: int = Field(default=2_000, ge=1, le=100_000)
    writer_flush_interval_sec: float = Field(default=1.0, gt=0, le=3600)
    heartbeat_interval_sec: float = Field(default=15.0, gt=0, le=3600)
    writer_retry_max_sec: float = Field(
        default=30.0, gt=0, le=3600, description="longest wait between the event writer's database retries"
    )
    journal_rotate_bytes: int = Field(
        default=16 * 1024 * 1024, ge=4096, le=1024**3, description="size at which the event journal starts a new file"
    )
    events_retention_days: int = Field(default=90, ge=1, le=36_500)

    # Alert thresholds
    coverage_warning: float = Field(default=80.0, ge=0, le=100)
    coverage_critical: float = Field(default=50.0, ge=0, le=100)
    failure_rate_warning: float = Field(default=0.10, ge=0, le=1)
    failure_rate_critical: float = Field(default=0.25, ge=0, le=1)
    alert_window_minutes: int = Field(default=60, ge=1, le=43_200)
    min_models_for_coverage: int = Field(default=10, ge=1, le=1_000_000)
    min_attempts_for_failure_rate: int = Field(default=20, ge=1, le=1_000_000)
    stall_minutes: float = Field(default=15.0, gt=0, le=43_200)
    alert_for_minutes: float = Field(default=0.0, ge=0, le=43_200, description="how long a condition must last before its alert fires")
    cooldown_minutes: float = Field(default=30.0, ge=0, le=43_200)
    alert_history_retention_days: int = Field(default=90, ge=1, le=36_500)

    # Alerts: hysteresis, anomaly detection, state machine and delivery
    coverage_recovery_margin: float = Field(
        default=2.0, ge=0, le=100, description="percentage points above a coverage threshold before it clears"
    )
    failure_rate_recovery_margin: float = Field(
        default=0.02, ge=0, le=1, description="fraction below a failure-rate threshold before it clears"
    )
    anomaly_z_threshold: float = Field(default=3.0, gt=0, le=100, description="coverage anomaly fires below -z")
    anomaly_recovery_z: float = Field(default=1.0, ge=0, le=100, description="z units the score must recover by")
    anomaly_training_days: float = Field(default=7.0, gt=0, le=365, description="history before the window")
    anomaly_min_history_models: int = Field(default=30, ge=2, le=1_000_000)
    anomaly_min_recent_models: int = Field(default=5, ge=1, le=1_000_000)
    anomaly_min_drop: float = Field(
        default=5.0, ge=0, le=100, description="percentage points the mean must drop, besides the z-score"
    )
    anomaly_min_std: float = Field(
        default=1.0, gt=0, le=100, description="floor for the historic standard deviation, in percentage points"
    )
    stall_forget_hours: float = Field(
        default=24.0, gt=0, le=24 * 365, description="ignore worker heartbeats older than this"
    )
    alert_rule_for_minutes: dict[str, float] = Field(
        default_factory=dict, description='per-rule `for` duration in minutes, as JSON: {"processing_stall": 5}'
    )
    alert_repeat_minutes: float = Field(
        default=240.0, ge=0, le=60 * 24 * 30, description="reminder interval for a still-firing alert; 0 = none"
    )
    notify_resolved: bool = Field(default=True, description="send a notification when an alert resolves")
    alert_interval_sec: float = Field(default=60.0, gt=0, le=86_400, description="`alerts run` evaluation interval")
    alert_lock_timeout_sec: float = Field(
        default=30.0, gt=0, le=3600, description="how long an evaluator waits for another one to finish"
    )
    notification_retry_base_sec: float = Field(default=30.0, gt=0, le=86_400)
    notification_retry_max_sec: float = Field(default=3600.0, gt=0, le=7 * 86_400)
    notification_lease_sec: float = Field(
        default=300.0, gt=0, le=86_400, description="a claimed notification is retried after this if unrecorded"
    )

    # Database monitor
    size_sample_interval_sec: int = Field(default=300, ge=0, le=604_800)
    size_samples_retention_days: int = Field(default=90, ge=1, le=36_500)
    table_size_limit_bytes: int | None = Field(default=None, ge=1, le=2**62)
    monitor_statement_timeout_ms: int = Field(
        default=5_000, ge=10, le=3_600_000, description="statement_timeout of each database monitor statement"
    )
    monitor_lock_timeout_ms: int = Field(
        default=200, ge=1, le=60_000, description="how long a monitor statement waits for a lock before skipping"
    )
    monitor_exact_timeout_ms: int = Field(
        default=900_000, ge=1_000, le=86_400_000, description="statement_timeout of the exact bloat scan"
    )
    monitor_sample_pages: int = Field(
        default=40, ge=1, le=1_000_000, description="heap pages the TABLESAMPLE of JSONB sizes aims to read"
    )
    ledger_fresh_minutes: float = Field(
        default=10.0, gt=0, le=10_080, description="JSONB sizes come from the ledger when refreshed this recently"
    )
    unused_index_min_days: float = Field(
        default=7.0, ge=0, le=3650, description="statistics age before a never-scanned index counts as unused"
    )
    table_size_warning_ratio: float = Field(default=0.80, gt=0, le=1, description="of table_size_limit_bytes")
    table_size_critical_ratio: float = Field(default=0.95, gt=0, le=1, description="of table_size_limit_bytes")
    db_bloat_warning_percent: float = Field(default=30.0, gt=0, le=100)
    db_bloat_critical_percent: float = Field(default=50.0, gt=0, le=100)
    db_bloat_min_bytes: int = Field(
        default=100 * 1024 * 1024, ge=0, le=2**62, description="wasted bytes below which bloat never alerts"
    )
    db_cache_hit_warning: float = Field(default=0.99, ge=0, le=1, description="between the last two size samples")
    db_cache_hit_critical: float = Field(default=0.90, ge=0, le=1)
    db_cache_hit_min_blocks: int = Field(
        default=1_000, ge=1, le=2**62, description="block accesses between samples below which the ratio is not judged"
    )
    db_dead_tuples_warning_ratio: float = Field(default=0.10, gt=0, le=1, description="dead / (live + dead)")
    db_dead_tuples_critical_ratio: float = Field(default=0.20, gt=0, le=1)
    db_dead_tuples_min: int = Field(default=10_000, ge=0, le=2**62, description="dead tuples below which nothing alerts")
    db_autovacuum_max_age_hours: float = Field(
        default=240.0, gt=0, le=24 * 365, description="vacuum age that alerts while dead tuples pile up"
    )
    db_long_transaction_warning_minutes: float = Field(default=15.0, gt=0, le=10_080)
    db_long_transaction_critical_minutes: float = Field(default=60.0, gt=0, le=10_080)

    # Model-quality ledger
    ledger_change_check: Literal["exact", "statistics"] = Field(
        default="statistics",
        description="exact: every refresh compares each row's version (one heap scan); statistics: skip that "
        "scan while the table's insert/update/delete counters are unchanged",
    )
    ledger_full_check_sec: float = Field(
        default=300.0, ge=0, le=86_400, description="statistics mode: longest time between two exact comparisons"
    )

    # Dashboard
    dashboard_host: str = Field(default="127.0.0.1")
    dashboard_port: int = Field(default=8501, ge=1, le=65535)

    @field_validator("alert_to_emails", mode="before")
    @classmethod
    def _split_addresses(cls, value: Any) -> list[str]:
        if value is None or value == "":
            return []
        items = value.split(",") if isinstance(value, str) else list(value)
        addresses = [str(item).strip() for item in items if str(item).strip()]
        for address in addresses:
            if not _EMAIL.match(address):
                raise ValueError(f"{address!r} is not an e-mail address (expected a comma-separated list)")
        return addresses

    @field_validator("alert_rule_for_minutes")
    @classmethod
    def _check_rule_for_minutes(cls, value: dict[str, float]) -> dict[str, float]:
        for rule, minutes in value.items():
            if not 0 <= minutes <= 60 * 24 * 30:
                raise ValueError(f"rule {rule!r} has `for` duration {minutes} minutes, expected 0 to 43200")
        return value

    @field_validator("alert_from_email")
    @classmethod
    def _check_from(cls, value: str) -> str:
        if not re.match(r"^[^@\s]+@[^@\s]+$", value):
            raise ValueError(f"{value!r} is not an e-mail address")
        return value

    @field_validator("db_sslmode")
    @classmethod
    def _check_sslmode(cls, value: str | None) -> str | None:
        if value is not None and value not in SSL_MODES:
            raise ValueError(f"unknown SSL mode {value!r}, expected one of {', '.join(SSL_MODES)}")
        return value

    @field_validator("state_schema", "models_schema", "models_table", "application_name")
    @classmethod
    def _check_identifier(cls, value: str) -> str:
        if not value or len(value.encode()) > _IDENTIFIER_MAX or "\x00" in value:
            raise ValueError(f"{value!r} must be 1-{_IDENTIFIER_MAX} bytes with no NUL")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        raw = value.get_secret_value().strip()
        try:
            url = make_url(normalize_url(raw))
        except ArgumentError:
            raise ValueError("is not a database URL (expected postgresql://user:password@host:port/dbname)") from None
        if not url.drivername.startswith("postgresql"):
            raise ValueError(f"uses {url.drivername!r}; serialmon needs a postgresql:// URL")
        sslmode = url.query.get("sslmode")
        if sslmode is not None and sslmode not in SSL_MODES:
            raise ValueError(f"has unknown sslmode {sslmode!r}, expected one of {', '.join(SSL_MODES)}")
        return SecretStr(raw)

    @model_validator(mode="after")
    def _check_threshold_order(self) -> Settings:
        for worse, milder, lower_is_worse in _THRESHOLD_PAIRS:
            worse_value, milder_value = getattr(self, worse), getattr(self, milder)
            inverted = worse_value > milder_value if lower_is_worse else worse_value < milder_value
            if inverted:
                relation = "at or below" if lower_is_worse else "at or above"
                raise ValueError(
                    f"{_variable(worse)}={worse_value} must be {relation} {_variable(milder)}={milder_value} "
                    f"(one of the two is set the wrong way round)"
                )
        return self

    # Derived paths

    @property
    def resolved_outbox_dir(self) -> Path:
        return self.outbox_dir or self.data_dir / "outbox"

    @property
    def resolved_journal_dir(self) -> Path:
        return self.journal_dir or self.data_dir / "journal"

    @property
    def embedded_dir(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def smtp_configured(self) -> bool:
        return bool(self.smtp_host)


# Each pair: the worse level, the milder level, and whether a lower value is
# worse. An inverted pair hides the milder level, so a warning would never fire.
_THRESHOLD_PAIRS = (
    ("coverage_critical", "coverage_warning", True),
    ("failure_rate_critical", "failure_rate_warning", False),
    ("table_size_critical_ratio", "table_size_warning_ratio", False),
    ("db_bloat_critical_percent", "db_bloat_warning_percent", False),
    ("db_cache_hit_critical", "db_cache_hit_warning", True),
    ("db_dead_tuples_critical_ratio", "db_dead_tuples_warning_ratio", False),
    ("db_long_transaction_critical_minutes", "db_long_transaction_warning_minutes", False),
    ("notification_retry_max_sec", "notification_retry_base_sec", False),
)


def _variable(field: str) -> str:
    """Return the environment variable that set `field`, or its first name."""
    names = env_names(field)
    return next((name for name in names if name in os.environ), names[0])


def normalize_url(raw: str) -> str:
    """Return `raw` with a `postgres://` or `postgresql://` scheme switched to psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix):]
    return raw


def mask_url(raw: str | None) -> str | None:
    """Return the URL with its password (and any password query parameter) replaced by `***`."""
    if raw is None:
        return None
    try:
        url = make_url(normalize_url(raw))
    except ArgumentError:
        return "<invalid URL, hidden>"
    query = {key: ("***" if key.lower() in {"password", "sslpassword"} else value) for key, value in url.query.items()}
    return url.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def env_names(field: str) -> list[str]:
    """Return the environment variable names that set `field`, in order of precedence."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [f"SERIALMON_{field.upper()}"]


def _describe_error(error: ValidationError) -> str:
    first = error.errors()[0]
    if not first["loc"]:  # a check across several settings names them in its message
        return f"Invalid settings: {first['msg'].removeprefix('Value error, ')}"
    field = str(first["loc"][0]) if first["loc"] else "?"
    field = _FIELD_BY_ALIAS.get(field.upper(), field)
    variable = _variable(field) if field in Settings.model_fields else field
    value = first.get("input")
    secret = "password" in field or field.endswith("_url")
    displayed = repr(value)
    if secret:
        displayed = "<hidden>"
    if secret and field == "database_url" and isinstance(value, str):
        displayed = mask_url(value)
    message = first["msg"].removeprefix("Value error, ")
    return f"Invalid setting {variable}={displayed}: {message}"


def _describe_source_error(error: Exception) -> str:
    found = re.search(r'field "(\w+)"', str(error))
    field = found.group(1) if found else None
    if field not in Settings.model_fields:
        return f"Invalid settings: {error}"
    variable = _variable(field)
    value = os.environ.get(variable)
    where = f"{variable}={value!r}" if value is not None else f"{variable} (in .env)"
    example = ', for example {"processing_stall": 5}' if field == "alert_rule_for_minutes" else ""
    return f"Invalid setting {where}: expected a JSON value{example}"


_FIELD_BY_ALIAS = {name.upper(): field for field in Settings.model_fields for name in env_names(field)}
_settings: Settings | None = None
_settings_lock = threading.Lock()


# SERIALMON_* variables that are not settings: the test suite's and the benchmarks'.
_NOT_SETTINGS = ("SERIALMON_TEST_", "SERIALMON_BENCH_", "SERIALMON_REQUIRE_BROWSER", "SERIALMON_SCREENSHOT_DIR")
_warned_unknown: set[str] = set()


def unknown_variables() -> list[tuple[str, str | None]]:
    """Return SERIALMON_* names in the environment or `.env` that set nothing, each with a close match or None."""
    names = {name.upper() for name in os.environ}
    env_file = Path(".env")
    if env_file.is_file():
        from dotenv import dotenv_values

        try:
            names |= {name.upper() for name in dotenv_values(env_file, encoding="utf-8")}
        except (OSError, UnicodeDecodeError):
            pass  # this check only warns, so an unreadable .env is skipped here
    known = list(_FIELD_BY_ALIAS)
    unknown = []
    for name in sorted(names):
        if name.startswith("SERIALMON_") and name not in _FIELD_BY_ALIAS and not name.startswith(_NOT_SETTINGS):
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
            unknown.append((name, close[0] if close else None))
    return unknown


def _warn_unknown_variables() -> None:
    for name, close in unknown_variables():
        if name in _warned_unknown:
            continue
        _warned_unknown.add(name)
        hint = f"; did you mean {close}?" if close else "; `serialmon config --reference` lists every setting"
        logger.warning("%s is not a serialmon setting and is ignored%s", name, hint)


def load_settings(**overrides: Any) -> Settings:
    """Build fresh settings; raises `SettingsError` with one line naming the bad variable.

    A SERIALMON_* variable that matches no setting is logged once as a warning
    (with the closest setting's name), because a typo would otherwise leave
    the default in force without a word.
    """
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        raise SettingsError(_describe_error(error)) from None
    except PydanticSettingsError as error:  # a JSON value that does not parse
        raise SettingsError(_describe_source_error(error)) from None
    _warn_unknown_variables()
    return settings


def get_settings() -> Settings:
    """Return the process-wide settings, loading them on first use."""
    global _settings
    with _settings_lock:
        if _settings is None:
            _settings = load_settings()
        return _settings


def set_settings(settings: Settings | None) -> None:
    """Replace the process-wide settings (None reloads them on next use); for tests and the CLI."""
    global _settings
    with _settings_lock:
        _settings = settings


def describe_settings(settings: Settings) -> list[tuple[str, str, str]]:
    """Return (variable, masked value, source) for every setting, for `serialmon config`."""
    from dotenv import dotenv_values

    dotenv_path = Path(".env")
    dotenv = {key.upper(): value for key, value in dotenv_values(dotenv_path).items()} if dotenv_path.exists() else {}
    environ = {key.upper(): value for key, value in os.environ.items()}
    rows = []
    for field in Settings.model_fields:
        names = env_names(field)
        source = "default"
        variable = names[0]
        for name in names:
            if name.upper() in environ:
                source, variable = "environment", name
                break
            if name.upper() in dotenv:
                source, variable = ".env", name
                break
        rows.append((variable, _masked_value(field, getattr(settings, field)), source))
    return rows


def settings_reference() -> str:
    """Return a Markdown table of every setting: variables, default and description (docs/configuration.md)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for field, info in Settings.model_fields.items():
        variables = ", ".join(f"`{name}`" for name in env_names(field))
        if info.default_factory is not None:
            default = _masked_value(field, info.default_factory())
        elif field == "data_dir":
            default = "the user data folder (platformdirs)"
        else:
            default = _masked_value(field, info.default)
        limits = [f"{label} {getattr(meta, attr)}" for meta in info.metadata
                  for attr, label in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
                  if getattr(meta, attr, None) is not None]
        meaning = (info.description or field.replace("_", " ")) + (f" ({', '.join(limits)})" if limits else "")
        lines.append(f"| {variables} | {default.replace('|', '/')} | {meaning.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _masked_value(field: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        return (mask_url(secret) or "-") if field == "database_url" else "***"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "-"
    return str(value)
