"""The score store: a SQL database (SQLite by default, PostgreSQL in production).

Tables:
* ``scoring_runs`` — one row per `cshealth score` run (id, time, as_of, versions).
* ``scores`` — per run and account: probabilities, health, band, change since the
  previous scoring, components and reasons. Append-only: history is never rewritten.
* ``latest_features`` — the newest feature snapshot per account, for online look-up
  and what-if scoring; replaced by each run.

A run is written in one transaction, so readers (several service replicas) see
either the previous run or the complete new one, never half of it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

DB_URL_ENV = "CSHEALTH_DB_URL"

metadata = sa.MetaData()

runs = sa.Table(
    "scoring_runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("scored_at", sa.DateTime, nullable=False),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("churn_model_version", sa.String(32), nullable=False),
    sa.Column("expansion_model_version", sa.String(32), nullable=False),
    sa.Column("accounts", sa.Integer, nullable=False),
)

scores = sa.Table(
    "scores",
    metadata,
    sa.Column("run_id", sa.String(64), sa.ForeignKey("scoring_runs.run_id"), primary_key=True),
    sa.Column("account_id", sa.String(128), primary_key=True),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("scored_at", sa.DateTime, nullable=False),
    sa.Column("churn_probability", sa.Float, nullable=False),
    sa.Column("expansion_probability", sa.Float, nullable=False),
    sa.Column("health_score", sa.Float, nullable=False),
    sa.Column("band", sa.String(16), nullable=False),
    sa.Column("health_change", sa.Float, nullable=True),
    sa.Column("components", sa.JSON, nullable=False),
    sa.Column("reasons", sa.JSON, nullable=False),
    sa.Column("model_version", sa.JSON, nullable=False),
    sa.Column("missing_features", sa.JSON, nullable=False),
    sa.Index("ix_scores_account", "account_id", "scored_at"),
)

latest_features = sa.Table(
    "latest_features",
    metadata,
    sa.Column("account_id", sa.String(128), primary_key=True),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("features", sa.JSON, nullable=False),
)

#: the score fields stored per account (and returned by the API)
SCORE_FIELDS = (
    "account_id", "as_of", "churn_probability", "expansion_probability", "health_score",
    "band", "health_change", "components", "reasons", "model_version", "missing_features",
)  # fmt: skip


def db_url(default_file: Path) -> str:
    """`CSHEALTH_DB_URL`, or a SQLite file (created with its folder) by default."""
    url = os.environ.get(DB_URL_ENV)
    if url:
        return url
    default_file = Path(default_file)
    default_file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{default_file}"


def _redact(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


class ScoreStore:
    """Reads and writes scores through SQLAlchemy; safe to share between threads."""

    def __init__(self, url: str, create: bool = True) -> None:
        """Open the store; with `create`, make missing tables (idempotent)."""
        self.url = url
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False}
        self.engine: Engine = sa.create_engine(url, **kwargs)
        if create:
            self.create()

    def __repr__(self) -> str:
        return f"ScoreStore({_redact(self.url)})"

    def create(self) -> None:
        """Create the tables if they do not exist."""
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # ----- writing ----------------------------------------------------------------
    def write_run(
        self,
        run: dict[str, Any],
        items: Sequence[dict[str, Any]],
        features: Sequence[dict[str, Any]],
    ) -> int:
        """Append a run and its scores, fill `health_change`, replace latest features.

        Returns the number of scores written. All or nothing: one transaction.
        """
        self.create()
        with self.engine.begin() as conn:
            previous = self._latest_health(conn, [i["account_id"] for i in items])
            rows = []
            for item in items:
                prev = previous.get(item["account_id"])
                change = None if prev is None else round(item["health_score"] - prev, 1)
                item["health_change"] = change
                rows.append(
                    {**{k: item[k] for k in SCORE_FIELDS}, "as_of": _date(item["as_of"]),
                     "run_id": run["run_id"], "scored_at": run["scored_at"]}
                )  # fmt: skip
            conn.execute(
                runs.insert(), [{**run, "as_of": _date(run["as_of"]), "accounts": len(rows)}]
            )
            if rows:
                conn.execute(scores.insert(), rows)
            conn.execute(latest_features.delete())
            if features:
                conn.execute(
                    latest_features.insert(),
                    [{"account_id": f["account_id"], "as_of": _date(f["as_of"]),
                      "run_id": run["run_id"], "features": f["features"]} for f in features],
                )  # fmt: skip
        log.info("store: run %s wrote %d scores to %r", run["run_id"], len(rows), self)
        return len(rows)

    @staticmethod
    def _latest_health(conn: sa.Connection, account_ids: list[str]) -> dict[str, float]:
        last = _latest_run_id(conn)
        if last is None:
            return {}
        q = sa.select(scores.c.account_id, scores.c.health_score).where(scores.c.run_id == last)
        return {a: h for a, h in conn.execute(q)}

    # ----- reading ----------------------------------------------------------------
    def latest_run(self) -> dict[str, Any] | None:
        """The newest scoring run, or None when nothing was scored yet."""
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(runs).order_by(runs.c.scored_at.desc(), runs.c.run_id.desc()).limit(1)
                )
                .mappings()
                .first()
            )
        return dict(row) if row else None

    def recent_runs(self, limit: int = 2) -> list[dict[str, Any]]:
        """The newest runs, newest first."""
        with self.engine.connect() as conn:
            q = sa.select(runs).order_by(runs.c.scored_at.desc(), runs.c.run_id.desc()).limit(limit)
            return [_plain(dict(r)) for r in conn.execute(q).mappings()]

    def run_scores(self, run_id: str) -> list[dict[str, Any]]:
        """Every score of one run."""
        with self.engine.connect() as conn:
            q = sa.select(*[scores.c[k] for k in SCORE_FIELDS]).where(scores.c.run_id == run_id)
            return [_plain(dict(r)) for r in conn.execute(q).mappings()]

    def latest_scores(self, account_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The newest run's score per requested account (absent ids are left out)."""
        if not account_ids:
            return {}
        with self.engine.connect() as conn:
            last = _latest_run_id(conn)
            if last is None:
                return {}
            q = sa.select(*[scores.c[k] for k in SCORE_FIELDS]).where(
                scores.c.run_id == last, scores.c.account_id.in_(list(set(account_ids)))
            )
            found = {r["account_id"]: _plain(dict(r)) for r in conn.execute(q).mappings()}
        return found

    def history(self, account_id: str) -> list[dict[str, Any]]:
        """Every stored score of one account, oldest first."""
        with self.engine.connect() as conn:
            q = (
                sa.select(scores.c.run_id, scores.c.scored_at, *[scores.c[k] for k in SCORE_FIELDS])
                .where(scores.c.account_id == account_id)
                .order_by(scores.c.scored_at, scores.c.run_id)
            )
            return [_plain(dict(r)) for r in conn.execute(q).mappings()]

    def features(self, account_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Latest feature snapshot per account (as stored by the newest run)."""
        with self.engine.connect() as conn:
            q = sa.select(latest_features).where(
                latest_features.c.account_id.in_(list(set(account_ids)))
            )
            return {r["account_id"]: _plain(dict(r)) for r in conn.execute(q).mappings()}

    def count_runs(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar_one())


def _latest_run_id(conn: sa.Connection) -> str | None:
    q = sa.select(runs.c.run_id).order_by(runs.c.scored_at.desc(), runs.c.run_id.desc()).limit(1)
    return conn.execute(q).scalar()


def _date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready: dates as ISO text; JSON columns decoded when a driver returns text."""
    out = {}
    for k, v in row.items():
        if isinstance(v, dt.datetime | dt.date):
            v = v.isoformat()
        elif isinstance(v, str) and k in ("components", "reasons", "model_version", "features"):
            v = json.loads(v)
        out[k] = v
    return out
