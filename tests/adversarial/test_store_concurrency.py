"""The score store under concurrent writers, a locked or unreachable database, bad account
ids and a loose umask: real processes on real SQLite files and the real PostgreSQL server."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import multiprocessing as mp
import os
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cshealth.cli import main
from cshealth.errors import UserError
from cshealth.settings import Settings
from serving.store import DB_TIMEOUT_ENV, ScoreStore, StoreError, db_url

PG_URL = os.environ.get("CSHEALTH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
WRITERS = 5
ACCOUNTS = 400
SECRET = "S3cretPW-x9"


# ----- helpers ---------------------------------------------------------------------------------
@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose search_path is a fresh schema of the PostgreSQL server (dropped after)."""
    schema = f"cshealth_adv_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.engine.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty store's URL on SQLite or in a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'scores.db'}"
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
def keep_umask() -> Iterator[None]:
    """Restore the process umask (`main` and the permission tests change it)."""
    old = os.umask(0o077)
    os.umask(old)
    try:
        yield
    finally:
        os.umask(old)


def _item(account: str, health: float) -> dict[str, Any]:
    return {
        "account_id": account, "as_of": "2026-01-02", "churn_probability": 0.1,
        "expansion_probability": 0.2, "health_score": health, "band": "yellow",
        "health_change": None, "components": {"usage": -1.0}, "reasons": [],
        "model_version": {"churn": "1", "expansion": "1"}, "missing_features": [],
    }  # fmt: skip


AT = dt.datetime(2026, 1, 2, 6, 0)


def _run(run_id: str, scored_at: dt.datetime | None = AT) -> dict[str, Any]:
    return {"run_id": run_id, "scored_at": scored_at, "as_of": dt.date(2026, 1, 2),
            "churn_model_version": "1", "expansion_model_version": "1"}  # fmt: skip


def _health(writer: int, account: int) -> float:
    """A distinct health per writer and account, so every change is checkable."""
    return round(10 + 13.7 * writer + (account % 50) * 0.3, 4)


def _writer(url: str, i: int, barrier: Any, results: Any) -> None:
    """One scoring run in its own process, started together with the others."""
    try:
        # as `cshealth score` did: the time taken when scoring began, before the others commit
        scored_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        store = ScoreStore(url)
        ids = [f"acct-{a:04d}" for a in range(ACCOUNTS)]
        items = [_item(a, _health(i, n)) for n, a in enumerate(ids)]
        feats = [{"account_id": a, "as_of": "2026-01-02", "features": {"writer": i}} for a in ids]
        barrier.wait(timeout=60)
        store.write_run(_run(f"w{i}", scored_at), items, feats)
        store.close()
        results.put((i, None))
    except Exception as err:  # reported to the parent, which fails the test
        barrier.abort()  # the others stop waiting for this one
        results.put((i, f"{type(err).__name__}: {err}"[:500]))


def _write_concurrently(url: str, n: int = WRITERS) -> list[str | None]:
    """`n` processes each write one run at the same moment; their errors (None: ok)."""
    ctx = mp.get_context("fork")  # fast: no re-import of the test's modules
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, i, barrier, results)) for i in range(n)]
    for p in procs:
        p.start()
    errors: dict[int, str | None] = dict(results.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    return [errors[i] for i in range(n)]


def _assert_serialised(url: str, n: int) -> None:
    """Runs ordered by scored_at chain their health changes; latest features = newest run."""
    store = ScoreStore(url, create=False)
    order = store.recent_runs(n + 1)[::-1]  # oldest first, as readers order them
    assert len(order) == n
    assert len({r["scored_at"] for r in order}) == n, "runs share a scored_at: order is ambiguous"
    previous: dict[str, float] | None = None
    first_runs = 0
    for run in order:
        got = {s["account_id"]: s for s in store.run_scores(run["run_id"])}
        changes = [s["health_change"] for s in got.values()]
        if previous is None:
            first_runs += 1
            assert changes == [None] * len(got)
        else:
            for a, s in got.items():
                want = round(s["health_score"] - previous[a], 1)
                assert s["health_change"] == want, (run["run_id"], a, s["health_change"], want)
        previous = {a: s["health_score"] for a, s in got.items()}
    assert first_runs == 1
    newest = store.latest_run()
    assert newest is not None and newest["run_id"] == order[-1]["run_id"]
    feats = store.features([f"acct-{a:04d}" for a in range(ACCOUNTS)])
    assert len(feats) == ACCOUNTS
    assert {f["run_id"] for f in feats.values()} == {newest["run_id"]}
    assert {f["features"]["writer"] for f in feats.values()} == {int(newest["run_id"][1:])}
    store.close()


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and SECRET not in err
    for needle in needles:
        assert needle in err, err


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ----- 4. concurrent scoring runs ----------------------------------------------------------
def test_concurrent_runs_serialise_on_postgresql(pg_url: str) -> None:
    """Simultaneous runs: no duplicate key, each change against the run committed before."""
    assert _write_concurrently(pg_url) == [None] * WRITERS
    _assert_serialised(pg_url, WRITERS)


def test_concurrent_runs_serialise_on_sqlite(tmp_path: Path) -> None:
    """Same on SQLite: the served (newest) run also owns latest_features."""
    url = f"sqlite:///{tmp_path / 'scores.db'}"
    assert _write_concurrently(url) == [None] * WRITERS
    _assert_serialised(url, WRITERS)


def test_a_run_that_started_earlier_but_commits_later_goes_after(any_url: str) -> None:
    """scored_at is fixed under the lock: the later commit is the newer run."""
    store = ScoreStore(any_url)
    started = dt.datetime(2026, 1, 2, 6, 0)
    store.write_run(_run("late", started + dt.timedelta(minutes=5)), [_item("A", 50.0)], [])
    store.write_run(_run("early", started), [_item("A", 40.0)],
                    [{"account_id": "A", "as_of": "2026-01-02", "features": {"x": 1}}])  # fmt: skip
    newest = store.latest_run()
    assert newest is not None and newest["run_id"] == "early"
    assert newest["scored_at"] > started + dt.timedelta(minutes=5)
    assert store.latest_scores(["A"])["A"]["health_change"] == -10.0
    assert store.features(["A"])["A"]["run_id"] == "early"
    store.close()


# ----- 7. a locked SQLite store, an unreachable PostgreSQL ---------------------------------
def _hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another connection holding SQLite's write lock (as a running `cshealth score`)."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_sqlite_locked_longer_than_the_timeout_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_umask: None
) -> None:
    path = tmp_path / "scores.db"
    ScoreStore(f"sqlite:///{path}").close()
    monkeypatch.setenv("CSHEALTH_DB_URL", f"sqlite:///{path}")
    monkeypatch.setenv(DB_TIMEOUT_ENV, "0.2")
    other = _hold_write_lock(path)
    try:
        with pytest.raises(StoreError, match="locked by another writer"):
            ScoreStore(f"sqlite:///{path}", timeout_s=0.2).write_run(
                _run("r"), [_item("A", 1.0)], []
            )
        rc, _, err = _cli(["score", "--features", str(tmp_path / "none.parquet")])
    finally:
        other.rollback()
        other.close()
    _assert_one_line_error(rc, err, "locked by another writer", DB_TIMEOUT_ENV, str(path))


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_bad_timeout_setting_names_it(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UserError, match=DB_TIMEOUT_ENV):
        Settings.from_env({DB_TIMEOUT_ENV: value})
    monkeypatch.setenv(DB_TIMEOUT_ENV, value)
    rc, _, err = _cli(["score", "--features", str(tmp_path / "none.parquet")])
    _assert_one_line_error(rc, err, DB_TIMEOUT_ENV)


UNREACHABLE = {
    "refused": f"postgresql://u:{SECRET}@127.0.0.1:1/x",
    "bad host": f"postgresql+psycopg://u:{SECRET}@no-such-host.invalid:5432/x",
    "bad database": f"postgresql://postgres:{SECRET}@127.0.0.1:5432/cshealth_no_such_db",
}


@pytest.mark.parametrize("url", UNREACHABLE.values(), ids=UNREACHABLE.keys())
def test_unreachable_postgresql_is_one_line_for_score(
    url: str, monkeypatch: pytest.MonkeyPatch, keep_umask: None
) -> None:
    monkeypatch.setenv("CSHEALTH_DB_URL", url)
    rc, _, err = _cli(["score"])
    _assert_one_line_error(rc, err, "cannot open the score store", ":***@", "CSHEALTH_DB_URL")


def test_unreachable_postgresql_is_one_line_for_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_umask: None
) -> None:
    """`cshealth report` opens the store too (the snapshot table is stubbed: not under test)."""
    from features.snapshots import SnapshotTable

    stub = type("Snaps", (), {"frame": None})()
    monkeypatch.setattr(SnapshotTable, "read", classmethod(lambda cls, path: stub))
    monkeypatch.setenv("CSHEALTH_DB_URL", UNREACHABLE["refused"])
    rc, _, err = _cli(["report", "--out", str(tmp_path / "r.html")])
    _assert_one_line_error(rc, err, "cannot open the score store", "127.0.0.1:1")


@pytest.mark.parametrize(
    "url",
    [f"mysql://u:{SECRET}@h/db", f"postgresql+psycopg2://u:{SECRET}@h/db", "::nonsense"],
    ids=["mysql", "psycopg2", "nonsense"],
)
def test_unusable_url_is_a_store_error_without_the_password(url: str) -> None:
    """Unsupported backend, driver not installed, not a URL: actionable, no traceback."""
    with pytest.raises(StoreError, match="CSHEALTH_DB_URL") as exc:
        ScoreStore(url)
    assert SECRET not in str(exc.value)


# ----- 6. account data never in a store error ----------------------------------------------
def test_too_long_account_id_names_the_column_not_the_value(any_url: str) -> None:
    store = ScoreStore(any_url)
    long_id = "secret-customer-" + "x" * 200
    with pytest.raises(StoreError) as exc:
        store.write_run(_run("run-long"), [_item(long_id, 50.0)], [])
    msg = str(exc.value)
    assert "scores.account_id" in msg and "run-long" in msg and "secret-customer" not in msg
    assert store.count_runs() == 0
    store.close()


def test_write_failure_names_table_and_run_not_row_values(any_url: str) -> None:
    store = ScoreStore(any_url)
    dup = [_item("Acme-Secret-Corp", 50.0), _item("Acme-Secret-Corp", 40.0)]
    with pytest.raises(StoreError) as exc:
        store.write_run(_run("run-dup"), dup, [])
    msg = str(exc.value)
    assert "run-dup" in msg and "scores" in msg
    assert "Acme-Secret-Corp" not in msg and "50.0" not in msg
    assert exc.value.__cause__ is None and exc.value.__suppress_context__
    assert store.count_runs() == 0
    store.close()


# ----- 10. private store files whatever the umask ------------------------------------------
def test_sqlite_store_files_are_private_under_umask_022(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_umask: None
) -> None:
    os.umask(0o022)  # as a BentoML server or a plain shell may run
    monkeypatch.delenv("CSHEALTH_DB_URL", raising=False)
    path = Path(db_url(tmp_path / "data" / "scores.db").removeprefix("sqlite:///"))
    ScoreStore(f"sqlite:///{path}").write_run(_run("r1"), [_item("A", 1.0)], [])
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    # a URL naming a folder that does not exist yet: created private as well
    deep = tmp_path / "new" / "deeper" / "scores.db"
    store = ScoreStore(f"sqlite:///{deep}")
    assert _mode(deep) == 0o600
    assert _mode(deep.parent) == 0o700 and _mode(deep.parent.parent) == 0o700
    # SQLite gives its journal and WAL files the database file's mode
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute("UPDATE scores SET band = 'red'")
    journal = path.with_name(path.name + "-journal")
    assert journal.exists() and _mode(journal) == 0o600
    raw.execute("ROLLBACK")
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("UPDATE scores SET band = 'red'")
    wal = [path.with_name(path.name + s) for s in ("-wal", "-shm")]
    assert all(p.exists() and _mode(p) == 0o600 for p in wal)
    raw.close()
    store.close()
