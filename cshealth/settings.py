"""The process environment, read in one place: every variable cshealth reads is a field here.

`params.yaml` (`cshealth.config`) says what the pipeline computes; these settings say
where it runs: stores, secrets, server knobs. The entry points (the `cshealth` CLI, the
BentoML service) build `Settings.from_env()` once and pass the values down; library code
used in-process (tests, notebooks) falls back to `Settings.from_env()` where it needs
one (`training.tracking`). An empty variable counts as unset.

The README's "Settings" table is `markdown_table()`; a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cshealth.errors import UserError

DEFAULT_MLFLOW_URI = "sqlite:///mlflow.db"
DEFAULT_UMASK = 0o077
#: True while `from_env` validates an explicit mapping (then the process environment is ignored)
_EXPLICIT: ContextVar[bool] = ContextVar("cshealth_settings_explicit", default=False)


def _env(name: str) -> Any:
    """The field's environment variable (its alias; fields are filled by it only)."""
    return AliasChoices(name)


class Settings(BaseSettings):
    """Where cshealth runs: stores, secrets and server knobs, from environment variables."""

    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", env_ignore_empty=True, case_sensitive=True,
        populate_by_name=False,
    )  # fmt: skip

    # ----- files and stores
    params_file: Path | None = Field(None, validation_alias=_env("CSHEALTH_PARAMS"),
        description="The params file the service loads (default `./params.yaml`; "
        "`cshealth serve` sets it from `--params`).")  # fmt: skip
    db_url: SecretStr | None = Field(None, validation_alias=_env("CSHEALTH_DB_URL"),
        description="The score store, a SQLAlchemy URL (`postgresql+psycopg://...`); "
        "default a SQLite file at `serving.db_file`.")  # fmt: skip
    db_timeout_s: float = Field(60.0, gt=0, lt=86400,
        validation_alias=_env("CSHEALTH_DB_TIMEOUT"),
        description="Seconds a store writer waits for a lock.")  # fmt: skip
    umask: int = Field(DEFAULT_UMASK, ge=0, le=0o777, validation_alias=_env("CSHEALTH_UMASK"),
        description="Permission bits withheld from what cshealth writes, octal "
        "(default `077`: owner-only; `022` to share read access).")  # fmt: skip

    # ----- MLflow
    mlflow_uri: str = Field(DEFAULT_MLFLOW_URI, validation_alias=_env("MLFLOW_TRACKING_URI"),
        description="The MLflow tracking and registry store (a relative SQLite path is "
        "resolved against the working directory; `http://user:password@host` credentials "
        "move to the two variables below).")  # fmt: skip
    mlflow_experiment: str = Field("cshealth",
        validation_alias=_env("CSHEALTH_MLFLOW_EXPERIMENT"),
        description="The MLflow experiment of training runs.")  # fmt: skip
    mlflow_username: str | None = Field(None,
        validation_alias=_env("MLFLOW_TRACKING_USERNAME"),
        description="MLflow server user (basic auth).")  # fmt: skip
    mlflow_password: SecretStr | None = Field(None,
        validation_alias=_env("MLFLOW_TRACKING_PASSWORD"),
        description="MLflow server password (basic auth).")  # fmt: skip
    mlflow_token: SecretStr | None = Field(None, validation_alias=_env("MLFLOW_TRACKING_TOKEN"),
        description="MLflow server bearer token (when no user is set).")  # fmt: skip

    # ----- the service
    api_key: SecretStr | None = Field(None, validation_alias=_env("CSHEALTH_API_KEY"),
        description="The service's API key (clients send `Authorization: Bearer <key>`); "
        "required unless `cshealth serve --no-auth`.")  # fmt: skip
    no_auth: str | None = Field(None, validation_alias=_env("CSHEALTH_NO_AUTH"),
        description="Set by `cshealth serve --no-auth` only (a per-start marker; any other "
        "value is refused).")  # fmt: skip
    instance: str | None = Field(None, validation_alias=_env("CSHEALTH_INSTANCE"),
        description="The per-start id `cshealth serve` gives the server (answers carry it "
        "in `X-CSHealth-Instance`).")  # fmt: skip
    workers: int = Field(1, ge=1, le=64, validation_alias=_env("CSHEALTH_WORKERS"),
        description="BentoML worker processes (one async worker with micro-batching "
        "serves most on 2 cores).")  # fmt: skip
    load_retry_s: float = Field(10.0, gt=0, validation_alias=_env("CSHEALTH_LOAD_RETRY_S"),
        description="While loading fails (no champion or scoring run yet), retry this "
        "often.")  # fmt: skip
    batch_wait_ms: float = Field(0.0, ge=0, le=1000,
        validation_alias=_env("CSHEALTH_BATCH_WAIT_MS"),
        description="Extra wait to fill a scoring batch (0: batches form only from "
        "requests arriving while one is scored).")  # fmt: skip
    microbatch: bool = Field(True, validation_alias=_env("CSHEALTH_MICROBATCH"),
        description="`0` scores each request on its own (for comparison in the "
        "benchmark).")  # fmt: skip
    # ----- alerts
    alert_webhooks: SecretStr | None = Field(None, validation_alias=_env("CSHEALTH_ALERT_WEBHOOKS"),
        description="Webhook URLs alerts are POSTed to after `cshealth score`, separated by "
        "spaces or commas (unset: no alerts).")  # fmt: skip
    alert_secret: SecretStr | None = Field(None, validation_alias=_env("CSHEALTH_ALERT_SECRET"),
        description="The key of the alerts' HMAC-SHA256 signature header "
        "(`X-CSHealth-Signature: sha256=<hex>`); required when webhooks are set.")  # fmt: skip
    # ----- engines
    spark_master: str = Field("local[2]", validation_alias=_env("CSHEALTH_SPARK_MASTER"),
        description="The Spark master `cshealth features --engine spark` and `cshealth score "
        "--engine spark` run on (`local[N]`, `spark://host:7077`, `yarn`, ...).")  # fmt: skip

    bentoml_timer_fix: bool = Field(True, validation_alias=_env("CSHEALTH_BENTOML_TIMER_FIX"),
        description="`0` leaves BentoML's timeout middleware unpatched (see "
        "`serving/bentoml_fixes.py`).")  # fmt: skip

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any,
                                   env_settings: Any, **_: Any) -> tuple[Any, ...]:
        """Environment variables only (no .env or secrets files); none for an explicit map."""
        return (init_settings,) if _EXPLICIT.get() else (init_settings, env_settings)

    @field_validator("umask", mode="before")
    @classmethod
    def _octal(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return int(value.strip(), 8)
            except ValueError:
                raise ValueError("not an octal umask such as 077 or 022") from None
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _not_blank(cls, value: Any) -> Any:
        if isinstance(value, str) and value and not value.strip():
            raise ValueError("blank (only whitespace): set a real key")
        return value.strip() if isinstance(value, str) else value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings of `environ` (default: this process's); UserError naming the variable."""
        try:
            if environ is None:
                return cls()
            values = {k: v for k, v in environ.items() if k in ENV_NAMES and v != ""}
            token = _EXPLICIT.set(True)
            try:
                return cls(**values)
            finally:
                _EXPLICIT.reset(token)
        except ValidationError as err:
            first = err.errors()[0]
            name = str(first["loc"][0]) if first["loc"] else "environment"
            msg = str(first["msg"]).removeprefix("Value error, ")
            raise UserError(f"{name}: {msg}") from None

    def webhook_urls(self) -> list[str]:
        """The alert webhook URLs in clear (they may hold tokens: never log them)."""
        text = self.alert_webhooks.get_secret_value() if self.alert_webhooks else ""
        return [u for u in text.replace(",", " ").split() if u]

    def db_url_value(self) -> str | None:
        """The store URL in clear (it may hold a password: never log it)."""
        return self.db_url.get_secret_value() if self.db_url is not None else None


#: every variable read, in declaration order
ENV_NAMES: tuple[str, ...] = tuple(
    f.validation_alias.choices[0] for f in Settings.model_fields.values()  # type: ignore[union-attr]
)


def _default(name: str) -> str:
    field = Settings.model_fields[name]
    value = field.default
    if value is None:
        return "unset"
    if name == "umask":
        return f"`{value:03o}`"
    if isinstance(value, bool):
        return "`1`" if value else "`0`"
    return f"`{value}`"


def markdown_table() -> str:
    """The README's settings table: variable, default, meaning."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        env = field.validation_alias.choices[0]  # type: ignore[union-attr]
        lines.append(f"| `{env}` | {_default(name)} | {field.description} |")
    return "\n".join(lines)
