"""The score store: a SQL database (SQLite by default, PostgreSQL in production).

Tables:
* ``scoring_runs`` — one row per `cshealth score` run (id, time, as_of, versions, the
  newest data the models were trained on). A *backfill* run (`cshealth score --as-of`
  an earlier date than the served run's, or `cshealth replay`) is history only: it is
  never the served run, leaves ``latest_features`` alone and is compared with nothing.
* ``scores`` — per run and account: probabilities, health, band, change since the
  previous scoring, components and reasons. Append-only: history is never rewritten.
* ``latest_features`` — the newest feature snapshot per account, for online look-up
  and what-if scoring; replaced by each run.
* ``alert_deliveries`` — per run, account and webhook (a fingerprint of its URL, never
  the URL): how the alert's delivery went (`serving.alerts`); one row, updated on resends.

A run is written in one transaction, so readers (several service replicas) see
either the previous run or the complete new one, never half of it. Writers are
serialised: each write transaction first takes a store-wide lock (PostgreSQL: an
advisory transaction lock per schema; SQLite: ``BEGIN IMMEDIATE``), then reads the
newest run, so `health_change` always compares with the run committed just before,
`scored_at` order is commit order and ``latest_features`` belongs to the newest run.

A SQLite store file is created 0600 in folders created 0700 whatever the process umask
(it holds customer data; `CSHEALTH_UMASK` opts out, see `cshealth.files`); SQLite gives
its journal/WAL files the database file's mode.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from cshealth.errors import UserError
from cshealth.files import private_dirs, private_file
from features.contract import MAX_ID_LENGTH

log = logging.getLogger(__name__)

DB_URL_ENV = "CSHEALTH_DB_URL"
#: seconds a writer waits for another one (SQLite busy timeout, PostgreSQL lock_timeout)
DB_TIMEOUT_ENV = "CSHEALTH_DB_TIMEOUT"
DEFAULT_DB_TIMEOUT_S = 60.0
#: seconds to wait for a PostgreSQL server to accept the connection
CONNECT_TIMEOUT_S = 10
#: longest account id the store accepts: the data contract's identifier limit
ACCOUNT_ID_MAX = MAX_ID_LENGTH
#: first half of the PostgreSQL advisory-lock key of writers (the second is the schema)
_PG_LOCK_KEY = 0x0C5EA17
#: execution option asking the SQLite `begin` hook for `BEGIN IMMEDIATE`
_IMMEDIATE = "cshealth_begin_immediate"

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
    # the run's peer table (what healthy accounts look like) and the average account's health
    sa.Column("peers", sa.JSON, nullable=True),
    sa.Column("base_health", sa.Float, nullable=True),
    # history only, never served (null: an older store's run, served)
    sa.Column("backfill", sa.Boolean, nullable=True),
    # the newest data cutoff of the models' training data: a run after it is out of time
    sa.Column("models_cutoff", sa.Date, nullable=True),
)

scores = sa.Table(
    "scores",
    metadata,
    sa.Column("run_id", sa.String(64), sa.ForeignKey("scoring_runs.run_id"), primary_key=True),
    sa.Column("account_id", sa.String(ACCOUNT_ID_MAX), primary_key=True),
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
    # added in 0.3 (nullable: stores written before hold nulls)
    sa.Column("name", sa.String(256), nullable=True),
    sa.Column("segment", sa.String(128), nullable=True),
    sa.Column("csm_id", sa.String(128), nullable=True),
    sa.Column("expansion_reasons", sa.JSON, nullable=True),
    sa.Column("context", sa.JSON, nullable=True),
    sa.Column("plays", sa.JSON, nullable=True),
    sa.Column("changes", sa.JSON, nullable=True),
    sa.Index("ix_scores_account", "account_id", "scored_at"),
    sa.Index("ix_scores_run_csm", "run_id", "csm_id"),
)

latest_features = sa.Table(
    "latest_features",
    metadata,
    sa.Column("account_id", sa.String(ACCOUNT_ID_MAX), primary_key=True),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("features", sa.JSON, nullable=False),
)

alert_deliveries = sa.Table(
    "alert_deliveries",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(ACCOUNT_ID_MAX), primary_key=True),
    # a fingerprint of the webhook URL (the URL may hold a token: it is never stored)
    sa.Column("webhook", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),  # delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False),  # summed over every send
    sa.Column("http_status", sa.Integer, nullable=True),  # of the last attempt
    sa.Column("error", sa.String(300), nullable=True),  # of the last attempt, short
    sa.Column("first_attempt_at", sa.DateTime, nullable=True),
    sa.Column("last_attempt_at", sa.DateTime, nullable=True),
    sa.Column("delivered_at", sa.DateTime, nullable=True),
)
#: the columns of an `alert_deliveries` row (`ScoreStore.record_deliveries`)
DELIVERY_FIELDS = tuple(c.name for c in alert_deliveries.columns)

#: the score fields stored per account (and returned by the API)
SCORE_FIELDS = (
    "account_id", "as_of", "churn_probability", "expansion_probability", "health_score",
    "band", "health_change", "components", "reasons", "model_version", "missing_features",
    "name", "segment", "csm_id", "expansion_reasons", "context", "plays", "changes",
)  # fmt: skip
#: JSON columns (a driver may hand them back as text)
JSON_FIELDS = frozenset(
    c.name
    for t in (runs, scores, latest_features)
    for c in t.columns
    if isinstance(c.type, sa.JSON)
)
#: columns added after the first release: `create` adds them to an older store
ADDED_COLUMNS = {
    "scoring_runs": ("peers", "base_health", "backfill", "models_cutoff"),
    "scores": ("name", "segment", "csm_id", "expansion_reasons", "context", "plays", "changes"),
}
#: score fields every item must carry (the added ones may be absent: stored as null)
_REQUIRED = frozenset(SCORE_FIELDS) - set(ADDED_COLUMNS["scores"])
#: per account of the previous run, what `Annotate` gets (SCORE_FIELDS and the features)
Previous = dict[str, dict[str, Any]]
#: fills items' change fields from the previous run: (items, previous run or None, previous)
Annotate = Callable[[Sequence[dict[str, Any]], dict[str, Any] | None, Previous], None]


class StoreError(UserError):
    """The score store cannot be opened or written; the message says what to do."""


def db_url(default_file: Path, url: str | None = None) -> str:
    """`url` (the `CSHEALTH_DB_URL` setting), else a SQLite file (its folder created 0700)."""
    if url:
        return url
    default_file = Path(default_file)
    private_dirs(default_file.parent)
    return f"sqlite:///{default_file}"


def _redact(url: str | sa.URL) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def _parse_url(url: str) -> sa.URL:
    """The SQLAlchemy URL; plain `postgresql://` / `postgres://` use psycopg (installed)."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise StoreError(
            f"{DB_URL_ENV} is not a database URL such as sqlite:///data/scores.db or "
            "postgresql://user@host:5432/db"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        # the writers' lock (and so the run order) is implemented for these two only
        raise StoreError(
            f"{DB_URL_ENV}: the score store runs on SQLite or PostgreSQL, not "
            f"{parsed.get_backend_name()!r}; use sqlite:///path or postgresql://user@host/db"
        )
    return parsed


def _sqlite_file(url: sa.URL) -> Path | None:
    """The database file of a SQLite URL (None: in memory, a URI, or not SQLite)."""
    name = url.database
    if url.get_backend_name() != "sqlite" or not name or name == ":memory:":
        return None
    return None if name.startswith("file:") else Path(name)


def _make_engine(url: sa.URL, timeout: float) -> Engine:
    """An engine whose errors never show bound values (they are account data)."""
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
    backend = url.get_backend_name()
    if backend == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": timeout}
    elif backend == "postgresql" and "connect_timeout" not in url.query:
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        engine = sa.create_engine(url, **kwargs)
    except (sa.exc.NoSuchModuleError, ImportError) as err:
        raise StoreError(
            f"{DB_URL_ENV}: no database driver for {url.drivername!r} ({type(err).__name__}); "
            "use sqlite:///path or postgresql://user@host/db"
        ) from None
    if backend == "sqlite":
        _own_sqlite_transactions(engine)
    return engine


def _own_sqlite_transactions(engine: Engine) -> None:
    """Emit BEGIN ourselves so that writers can ask for `BEGIN IMMEDIATE`.

    pysqlite would begin lazily at the first write, after the reads of the previous
    run: two writers could then both read the same "previous" run (SQLAlchemy recipe).
    """

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get(_IMMEDIATE)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _db_message(orig: BaseException | None) -> str:
    """The driver's message in one line."""
    return " ".join(line.strip() for line in str(orig).splitlines() if line.strip())


def _safe_reason(err: sa.exc.DBAPIError) -> str:
    """What went wrong without the values involved (PostgreSQL details quote them)."""
    orig, diag = err.orig, getattr(err.orig, "diag", None)
    if diag is None:  # sqlite3 names table.column, never values
        return f"{type(orig).__name__}: {_db_message(orig)}"
    # the statement text names the table; its values are bound parameters, never inlined
    target = re.match(r"\s*(?:INSERT INTO|DELETE FROM|UPDATE)\s+(\w+)", err.statement or "")
    parts = [f"{type(orig).__name__} (SQLSTATE {getattr(orig, 'sqlstate', None)})"]
    for label, name in (("table", diag.table_name or (target and target[1])),
                        ("column", diag.column_name),
                        ("constraint", diag.constraint_name)):  # fmt: skip
        if name:
            parts.append(f"{label} {name}")
    return ", ".join(parts)


class ScoreStore:
    """Reads and writes scores through SQLAlchemy; safe to share between threads."""

    def __init__(
        self, url: str, create: bool = True, timeout_s: float = DEFAULT_DB_TIMEOUT_S
    ) -> None:
        """Open the store; with `create`, make missing tables (idempotent).

        `timeout_s`: how long a writer waits for another one's lock (`CSHEALTH_DB_TIMEOUT`).
        """
        self.url = url
        parsed = _parse_url(url)
        self._shown = _redact(parsed)
        self._password = parsed.password or ""
        self.timeout = timeout_s
        self.is_postgres = parsed.get_backend_name() == "postgresql"
        path = _sqlite_file(parsed)
        if path is not None:
            if create:
                private_dirs(path.parent)
            if path.parent.is_dir():  # else SQLite reports the missing folder on use
                private_file(path)
        self.engine: Engine = _make_engine(parsed, self.timeout)
        self._has_backfill = False  # whether scoring_runs has the column (an older store not)
        if create:
            self.create()

    def __repr__(self) -> str:
        return f"ScoreStore({self._shown})"

    def create(self) -> None:
        """Create the tables if they do not exist (under the writers' lock)."""
        with self._write("creating the tables") as conn:
            metadata.create_all(conn)
            _add_columns(conn)

    def close(self) -> None:
        self.engine.dispose()

    # ----- errors and the writers' lock ----------------------------------------------
    def _error(self, err: sa.exc.DBAPIError, what: str, opening: bool) -> StoreError:
        """`err` as one actionable line naming the store, never a password or row values."""
        orig = err.orig
        sqlstate = str(getattr(orig, "sqlstate", None) or "")
        text = _db_message(orig)
        if "database is locked" in text or sqlstate == "55P03":
            msg = (f"the score store {self._shown} stayed locked by another writer for more "
                   f"than {self.timeout:g} s while {what}: wait for the other `cshealth score` "
                   f"to finish and retry, or raise {DB_TIMEOUT_ENV} (seconds)")  # fmt: skip
        elif opening or sqlstate[:2] in ("08", "28", "3D") or "unable to open" in text:
            msg = (f"cannot open the score store {self._shown}: {text}; check {DB_URL_ENV} "
                   "(or serving.db_file in params.yaml), that the folder or database exists "
                   "and that the database server is running and reachable")  # fmt: skip
        else:
            msg = f"{what} in the score store {self._shown} failed: {_safe_reason(err)}"
        if self._password:
            msg = msg.replace(self._password, "***")
        return StoreError(msg)

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[sa.Connection]:
        """A write transaction holding the store-wide writers' lock."""
        opening = True
        try:
            with self.engine.connect() as conn:
                opening = False
                if self.is_postgres:
                    # read committed: each statement after the lock sees the runs committed
                    # while waiting for it (repeatable read would keep the older snapshot)
                    conn.execution_options(isolation_level="READ COMMITTED")
                else:
                    conn.execution_options(**{_IMMEDIATE: True})
                with conn.begin():
                    if self.is_postgres:
                        self._pg_lock(conn)
                    yield conn
        except sa.exc.DBAPIError as err:
            raise self._error(err, what, opening) from None  # the chained error quotes row values

    def _pg_lock(self, conn: sa.Connection) -> None:
        """Take this schema's writers' lock; give up after the timeout."""
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(self.timeout * 1000)}")
        conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(:key, hashtext(coalesce(current_schema(), '')))"),
            {"key": _PG_LOCK_KEY},
        )

    # ----- writing ----------------------------------------------------------------
    def write_run(
        self,
        run: dict[str, Any],
        items: Sequence[dict[str, Any]],
        features: Sequence[dict[str, Any]],
        annotate: Annotate | None = None,
    ) -> int:
        """Append a run and its scores, fill `health_change`, replace latest features.

        `run["scored_at"]` (naive UTC; None or absent: now) is set inside the lock to
        after the newest stored run, so that run order is commit order. `annotate`, when
        given, is called under the lock with the items, the previous run and its scores
        and features per account (see `Annotate`), to fill what changed since then.
        Returns the number of scores written. All or nothing: one transaction.
        """
        run_id = str(run["run_id"])
        backfill = bool(run.get("backfill"))
        _check_ids(run_id, "scores", items)
        _check_ids(run_id, "latest_features", features)
        with self._write(f"writing run {run_id}") as conn:
            metadata.create_all(conn)
            _add_columns(conn)
            last = conn.execute(sa.select(runs.c.scored_at).order_by(*_LAST).limit(1)).scalar()
            run["scored_at"] = _after(run.get("scored_at"), _stamp(last) if last else None)
            newest = None  # a backfill run is compared with nothing (it is not the next one)
            if not backfill:
                newest = conn.execute(_served(sa.select(runs)).order_by(*_NEWEST).limit(1))
                newest = newest.mappings().first()
                newest = _plain(dict(newest)) if newest else None
            previous = _previous(conn, newest["run_id"]) if newest else {}
            for item in items:
                prev = previous.get(item["account_id"])
                item["health_change"] = (
                    None if prev is None else round(item["health_score"] - prev["health_score"], 1)
                )
            if annotate is not None:
                annotate(items, newest, previous)
            rows = [
                {**{k: item[k] if k in _REQUIRED else item.get(k) for k in SCORE_FIELDS},
                 "as_of": as_date(item["as_of"]),
                 "run_id": run_id, "scored_at": run["scored_at"]}
                for item in items
            ]  # fmt: skip
            cutoff = run.get("models_cutoff")
            conn.execute(runs.insert(), [{
                **run, "as_of": as_date(run["as_of"]), "accounts": len(rows), "backfill": backfill,
                "models_cutoff": as_date(cutoff) if cutoff is not None else None,
            }])  # fmt: skip
            if rows:
                conn.execute(scores.insert(), rows)
            if backfill:
                log.info("store: backfill run %s (as_of %s) wrote %d scores to %r",
                         run_id, run["as_of"], len(rows), self)  # fmt: skip
                return len(rows)
            conn.execute(latest_features.delete())
            if features:
                conn.execute(
                    latest_features.insert(),
                    [{"account_id": f["account_id"], "as_of": as_date(f["as_of"]),
                      "run_id": run_id, "features": f["features"]} for f in features],
                )  # fmt: skip
        log.info("store: run %s wrote %d scores to %r", run_id, len(rows), self)
        return len(rows)

    # ----- alert deliveries ------------------------------------------------------
    def record_deliveries(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert or update delivery rows (`DELIVERY_FIELDS`) keyed by run, account, webhook.

        On an existing row the attempts add up, the first attempt time stays and a
        delivered row stays delivered; the rest is the newest send's.
        """
        if not rows:
            return
        t = alert_deliveries
        with self._write("recording alert deliveries") as conn:
            metadata.create_all(conn, tables=[t])  # a store created by an older version
            insert = (postgresql.insert if self.is_postgres else sqlite.insert)(t)
            new = insert.excluded
            kept = t.c.status == "delivered"
            stmt = insert.on_conflict_do_update(
                index_elements=[t.c.run_id, t.c.account_id, t.c.webhook],
                set_={
                    "attempts": t.c.attempts + new.attempts,
                    "first_attempt_at": sa.func.coalesce(t.c.first_attempt_at,
                                                         new.first_attempt_at),
                    "last_attempt_at": new.last_attempt_at,
                    "status": sa.case((kept, t.c.status), else_=new.status),
                    "http_status": new.http_status,
                    "error": new.error,
                    "delivered_at": sa.func.coalesce(t.c.delivered_at, new.delivered_at),
                },
            )  # fmt: skip
            conn.execute(stmt, [{k: r.get(k) for k in DELIVERY_FIELDS} for r in rows])

    def delivered(self, run_id: str) -> set[tuple[str, str]]:
        """The (account_id, webhook fingerprint) pairs of a run whose alert was delivered."""
        t = alert_deliveries
        q = sa.select(t.c.account_id, t.c.webhook).where(
            t.c.run_id == run_id, t.c.status == "delivered"
        )
        try:
            with self.engine.connect() as conn:
                if not sa.inspect(conn).has_table(t.name):
                    return set()  # an older store, opened without `create`
                return {(a, w) for a, w in conn.execute(q)}
        except sa.exc.DBAPIError as err:
            raise self._error(err, "reading alert deliveries", False) from None

    def deliveries(self, run_id: str) -> list[dict[str, Any]]:
        """Every delivery row of a run (account, then webhook order)."""
        t = alert_deliveries
        q = sa.select(t).where(t.c.run_id == run_id).order_by(t.c.account_id, t.c.webhook)
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(t.name):
                return []
            return [_plain(dict(r)) for r in conn.execute(q).mappings()]

    # ----- reading ----------------------------------------------------------------
    def _served(self, conn: sa.Connection, q: sa.Select) -> sa.Select:
        """`q` restricted to served runs (an older store, without the column, has only those)."""
        if not self._has_backfill:  # looked up until found: a writer may add it any time
            columns = sa.inspect(conn).get_columns(runs.name) \
                if sa.inspect(conn).has_table(runs.name) else []  # fmt: skip
            self._has_backfill = any(c["name"] == "backfill" for c in columns)
        return _served(q) if self._has_backfill else q

    def _latest_run_id(self, conn: sa.Connection) -> str | None:
        """The run readers serve: the newest served one."""
        q = self._served(conn, sa.select(runs.c.run_id, runs.c.scored_at))
        return conn.execute(q.order_by(*_NEWEST).limit(1)).scalar()

    def latest_run(self) -> dict[str, Any] | None:
        """The newest served scoring run, or None when nothing was scored yet."""
        with self.engine.connect() as conn:
            row = conn.execute(self._served(conn, sa.select(runs)).order_by(*_NEWEST).limit(1))
            row = row.mappings().first()
        return dict(row) if row else None

    def recent_runs(self, limit: int = 2) -> list[dict[str, Any]]:
        """The newest served runs (backfill runs left out), newest first."""
        with self.engine.connect() as conn:
            q = self._served(conn, sa.select(runs)).order_by(*_NEWEST).limit(limit)
            return [_plain(dict(r)) for r in conn.execute(q).mappings()]

    def all_runs(self) -> list[dict[str, Any]]:
        """Every run, backfill runs included, oldest as_of first (then scoring order)."""
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(runs.name):
                return []
            have = {c["name"] for c in sa.inspect(conn).get_columns(runs.name)}
            q = sa.select(*[c for c in runs.columns if c.name in have]).order_by(*_HISTORY)
            return [_plain(dict(r)) for r in conn.execute(q).mappings()]

    def run_scores(self, run_id: str) -> list[dict[str, Any]]:
        """Every score of one run."""
        with self.engine.connect() as conn:
            q = sa.select(*[scores.c[k] for k in SCORE_FIELDS]).where(scores.c.run_id == run_id)
            return [_plain(dict(r)) for r in conn.execute(q).mappings()]

    def predictions(self, run_id: str) -> list[dict[str, Any]]:
        """A run's account id, probabilities and band per account (`serving.realised`)."""
        cols = [scores.c[k] for k in
                ("account_id", "churn_probability", "expansion_probability", "band")]  # fmt: skip
        with self.engine.connect() as conn:
            q = sa.select(*cols).where(scores.c.run_id == run_id)
            return [dict(r) for r in conn.execute(q).mappings()]

    def latest_scores(self, account_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The newest run's score per requested account (absent ids are left out)."""
        if not account_ids:
            return {}
        with self.engine.connect() as conn:
            last = self._latest_run_id(conn)
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
                .order_by(scores.c.as_of, scores.c.scored_at, scores.c.run_id)
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

    def list_latest(
        self,
        csm_id: str | None = None,
        band: str | None = None,
        segment: str | None = None,
        limit: int = 100,
        offset: int = 0,
        *,
        run_id: str | None = None,
    ) -> tuple[int, list[dict[str, Any]]]:
        """The newest run's scores matching every given filter, lowest health first (ties:
        account id), `limit` of them after `offset`; and how many match in all.

        `run_id` lists that run instead of the newest (to pair the page with a run read
        before)."""
        with self.engine.connect() as conn:
            run = run_id if run_id is not None else self._latest_run_id(conn)
            if run is None:
                return 0, []
            where = [scores.c.run_id == run]
            for column, value in (("csm_id", csm_id), ("band", band), ("segment", segment)):
                if value is not None:
                    where.append(scores.c[column] == value)
            total = conn.execute(
                sa.select(sa.func.count()).select_from(scores).where(*where)
            ).scalar_one()
            q = (
                sa.select(*[scores.c[k] for k in SCORE_FIELDS])
                .where(*where)
                .order_by(scores.c.health_score, scores.c.account_id)
                .limit(limit)
                .offset(offset)
            )
            return int(total), [_plain(dict(r)) for r in conn.execute(q).mappings()]


#: newest run first: among served runs, the one readers serve
_NEWEST = (runs.c.scored_at.desc(), runs.c.run_id.desc())
#: the run committed last (backfill or not): scoring order is commit order
_LAST = _NEWEST
#: a history's order: by as_of, then scoring order (a backfill run sits at its as_of)
_HISTORY = (runs.c.as_of, runs.c.scored_at, runs.c.run_id)


def _served(q: sa.Select) -> sa.Select:
    """`q` restricted to the runs readers may serve (not backfill; null: an older run)."""
    return q.where(runs.c.backfill.is_not(True))


def _previous(conn: sa.Connection, run_id: str) -> Previous:
    """Per account of one run: its stored score fields and (when that run is the one
    `latest_features` belongs to) its feature values under ``"features"``."""
    q = sa.select(*[scores.c[k] for k in SCORE_FIELDS]).where(scores.c.run_id == run_id)
    out = {r["account_id"]: _plain(dict(r)) for r in conn.execute(q).mappings()}
    f = latest_features.c
    q = sa.select(f.account_id, f.features).where(f.run_id == run_id)
    for account, values in conn.execute(q):
        if account in out:
            out[account]["features"] = json.loads(values) if isinstance(values, str) else values
    return out


def _add_columns(conn: sa.Connection) -> None:
    """Add the columns of `ADDED_COLUMNS` that an older store lacks (all nullable)."""
    inspector = sa.inspect(conn)
    for table, names in ADDED_COLUMNS.items():
        have = {c["name"] for c in inspector.get_columns(table)}
        for name in names:
            if name in have:
                continue
            column = metadata.tables[table].c[name]
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f'ALTER TABLE {table} ADD COLUMN "{name}" {kind}')
            log.info("store: added column %s.%s (older store)", table, name)


def _stamp(value: Any) -> dt.datetime:
    """A stored time (datetime, or ISO text from `_plain`) as a naive datetime."""
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))


def _after(wanted: dt.datetime | None, newest: dt.datetime | None) -> dt.datetime:
    """`wanted` (default now) as naive UTC, moved just after `newest` when not later."""
    at = wanted or dt.datetime.now(dt.UTC)
    if at.tzinfo is not None:
        at = at.astimezone(dt.UTC).replace(tzinfo=None)
    if newest is not None and at <= newest:
        # another run committed since this one started: it is older, so this one goes after
        log.info("store: scored_at %s moved after the newest run's %s", at, newest)
        at = newest + dt.timedelta(microseconds=1)
    return at


def _check_ids(run_id: str, table: str, rows: Sequence[dict[str, Any]]) -> None:
    """Account ids must be text within the column size (SQLite would store anything)."""
    for n, row in enumerate(rows):
        a = row.get("account_id")
        if not isinstance(a, str) or not 0 < len(a) <= ACCOUNT_ID_MAX:
            size = len(a) if isinstance(a, str) else type(a).__name__
            raise StoreError(
                f"run {run_id}: {table}.account_id of row {n + 1} is not text of 1 to "
                f"{ACCOUNT_ID_MAX} characters ({size}); fix the account ids in the data"
            )


def as_date(value: Any) -> dt.date:
    """A date, datetime or ISO text as a date."""
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
        elif isinstance(v, str) and k in JSON_FIELDS:
            v = json.loads(v)
        out[k] = v
    return out
