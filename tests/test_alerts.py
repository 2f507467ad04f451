"""Alerts after scoring: selection, payloads, signed delivery to a real local receiver."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from cshealth.errors import UserError
from serving.alerts import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    Alert,
    Selection,
    check_webhooks,
    deliver,
    fingerprint,
    select_alerts,
    shown,
    sign,
    slack_payload,
    verify,
)
from serving.settings import AlertParams
from serving.store import ScoreStore
from tests.http_server import free_port
from tests.test_store import store  # noqa: F401 - the SQLite + PostgreSQL store fixture

SECRET = "s3cret-for-tests"
RUN = "run-2"


class Receiver:
    """A webhook on 127.0.0.1: records requests, answers `plan` statuses in order (then 200)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.plan: list[int | tuple[int, dict[str, str]]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    hdrs = {k.lower(): v for k, v in self.headers.items()}
                    receiver.requests.append({"path": self.path, "headers": hdrs, "body": data})
                    step = receiver.plan.pop(0) if receiver.plan else 200
                status, extra = step if isinstance(step, tuple) else (step, {})
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=abc123"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[ScoreStore]:
    s = ScoreStore(f"sqlite:///{tmp_path / 'scores.db'}")
    yield s
    s.close()


def _item(account: str, band: str, p: float, health: float = 50.0, **extra: Any) -> dict:
    return {"account_id": account, "as_of": "2026-01-02", "band": band, "churn_probability": p,
            "health_score": health, "health_change": -5.0, "name": f"Acme <{account}>",
            "segment": "smb", "csm_id": "csm-1",
            "reasons": [{"feature": "active_users_30d", "sentence": "Active users fell",
                         "impact": 0.4}] * 4,
            "plays": [{"play": "exec_sponsor", "description": "Meet the sponsor"}],
            **extra}  # fmt: skip


def _alerts(n: int) -> list[Alert]:
    return [Alert(RUN, _item(f"A{i}", "red", 0.5), ("band_worsened",), "yellow") for i in range(n)]


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


PARAMS = AlertParams(max_attempts=4, backoff_s=0.5, timeout_s=2)


# ----- selection ------------------------------------------------------------------------------
def test_band_worsened_and_threshold_crossings_are_selected() -> None:
    previous = {"G": {"band": "green", "churn_probability": 0.1},
                "Y": {"band": "yellow", "churn_probability": 0.2},
                "R": {"band": "red", "churn_probability": 0.6},  # was red: better is no alert
                "U": {"band": "yellow", "churn_probability": 0.35},  # above before: not crossed
                "C": {"band": "yellow", "churn_probability": 0.25}}  # fmt: skip
    items = [_item("G", "yellow", 0.2), _item("Y", "red", 0.5), _item("R", "yellow", 0.2),
             _item("U", "yellow", 0.4), _item("C", "yellow", 0.31), _item("N", "green", 0.32),
             _item("M", "green", 0.1)]  # fmt: skip
    sel = select_alerts(items, previous, AlertParams(churn_probability_above=0.3), RUN)
    got = {a.account_id: a.why for a in sel.alerts}
    assert got == {"G": ("band_worsened",),
                   "Y": ("band_worsened", "churn_probability_above"),
                   "C": ("churn_probability_above",),
                   "N": ("churn_probability_above",)}  # N: a new account first seen above
    assert [a.account_id for a in sel.alerts] == ["Y", "N", "C", "G"]  # most at risk first
    assert sel.alerts[0].band_before == "yellow" and sel.alerts[0].churn_probability_before == 0.2
    off = AlertParams(on_band_worsened=False, churn_probability_above=None)
    assert select_alerts(items, previous, off).alerts == []


def test_first_run_alerts_nothing_and_changes_stand_in_for_previous() -> None:
    items = [_item("A", "red", 0.9)]
    assert select_alerts(items, None, AlertParams()).alerts == []  # the baseline run
    item = _item("A", "red", 0.9, changes={"band_before": "green"})
    sel = select_alerts([item], None, AlertParams())
    assert [(a.account_id, a.why, a.band_before) for a in sel.alerts] == [
        ("A", ("band_worsened",), "green")]  # fmt: skip


def test_cap_keeps_the_most_at_risk_and_counts_the_rest() -> None:
    previous = {f"A{i}": {"band": "green", "churn_probability": 0.01} for i in range(10)}
    items = [_item(f"A{i}", "red", i / 10) for i in range(10)]
    sel = select_alerts(items, previous, AlertParams(max_alerts=3), RUN)
    assert [a.account_id for a in sel.alerts] == ["A9", "A8", "A7"] and sel.over_cap == 7


# ----- payloads and signing -------------------------------------------------------------------
def test_slack_payload_has_text_and_blocks_with_the_facts() -> None:
    alert = Alert(RUN, _item("A1", "red", 0.42, changes={"sentence": "Health 60 → 30"}),
                  ("band_worsened", "churn_probability_above"), "yellow", 0.2)  # fmt: skip
    msg = slack_payload(alert, AlertParams())
    assert set(msg) == {"text", "blocks"} and "A1" in msg["text"] and "yellow → red" in msg["text"]
    assert "&lt;A1&gt;" in msg["text"]  # names cannot inject Slack links or mentions
    flat = json.dumps(msg["blocks"], ensure_ascii=False)
    for fact in ("csm-1", "smb", "0.42", "Active users fell", "exec_sponsor", f"{RUN}:A1"):
        assert fact in flat
    assert all(b["type"] in ("section", "context") for b in msg["blocks"])


def test_signature_and_webhook_checks() -> None:
    body = b'{"a":1}'
    assert sign("k", body) == sign("k", body) != sign("k", body, 1700000000)
    hdrs = {"X-CSHealth-Timestamp": "1700000000", SIGNATURE_HEADER: sign("k", body, 1700000000)}
    assert verify("k", body, hdrs, now=1700000010)
    assert not verify("k", body + b" ", hdrs, now=1700000010)
    assert not verify("k", body, hdrs, now=1700009999)  # too old: a replay
    assert shown("https://hooks.slack.com/services/T0/B0/XYZsecret") .startswith(
        "https://hooks.slack.com/… [")
    assert "XYZsecret" not in shown("https://hooks.slack.com/services/T0/B0/XYZsecret")
    with pytest.raises(UserError, match="CSHEALTH_ALERT_SECRET is not"):
        check_webhooks(["https://example.com/h"], None)
    with pytest.raises(UserError, match="not an http") as err:
        check_webhooks(["ftp://user:pw@example.com/tok123"], "k")
    assert "tok123" not in str(err.value) and "pw" not in str(err.value)
    check_webhooks([], None)


# ----- delivery to a real receiver ------------------------------------------------------------
def test_delivery_is_signed_and_idempotent(receiver: Receiver, sqlite_store: ScoreStore) -> None:
    sel = Selection(_alerts(3), over_cap=2)
    s = deliver(sqlite_store, RUN, sel, [receiver.url], SECRET, PARAMS, sleep=Sleeps())
    assert (s.delivered, s.failed, s.already) == (3, 0, 0)
    assert s.line() == "alerts: 3 selected, 3 delivered to 1 webhook, 0 failed; 2 over max_alerts"
    for req, body in zip(receiver.requests, receiver.bodies(), strict=True):
        assert verify(SECRET, req["body"], req["headers"])
        assert req["headers"][IDEMPOTENCY_HEADER.lower()] == f"{RUN}:{body['account_id']}"
        assert req["headers"]["content-type"] == "application/json"
        assert body["band_before"] == "yellow" and body["why"] == ["band_worsened"]
        assert len(body["reasons"]) == 3 and body["plays"][0]["play"] == "exec_sponsor"
    again = deliver(sqlite_store, RUN, sel, [receiver.url], SECRET, PARAMS, sleep=Sleeps())
    assert len(receiver.requests) == 3 and (again.already, again.delivered) == (3, 0)
    rows = sqlite_store.deliveries(RUN)
    assert {r["webhook"] for r in rows} == {fingerprint(receiver.url)}
    assert all(r["status"] == "delivered" and r["attempts"] == 1 for r in rows)
    assert "abc123" not in json.dumps(rows)  # the URL (and its token) is never stored


def test_retries_on_5xx_with_backoff_and_not_on_4xx(
    receiver: Receiver, sqlite_store: ScoreStore
) -> None:
    receiver.plan = [500, 503, 200, 400]
    sleeps = Sleeps()
    s = deliver(sqlite_store, RUN, _alerts(2), [receiver.url], SECRET, PARAMS, sleep=sleeps)
    assert (s.delivered, s.failed) == (1, 1) and len(receiver.requests) == 4
    assert sleeps == [0.5, 1.0]  # doubled per retry; none after the 400
    rows = {r["account_id"]: r for r in sqlite_store.deliveries(RUN)}
    assert (rows["A0"]["status"], rows["A0"]["attempts"], rows["A0"]["http_status"]) == (
        "delivered", 3, 200)  # fmt: skip
    assert (rows["A1"]["status"], rows["A1"]["attempts"], rows["A1"]["error"]) == (
        "failed", 1, "HTTP 400")  # fmt: skip
    # a re-send retries only the failed one; attempts add up, the row turns delivered
    s = deliver(sqlite_store, RUN, _alerts(2), [receiver.url], SECRET, PARAMS, sleep=sleeps)
    assert (s.already, s.delivered) == (1, 1) and len(receiver.requests) == 5
    row = next(r for r in sqlite_store.deliveries(RUN) if r["account_id"] == "A1")
    assert (row["status"], row["attempts"], row["error"]) == ("delivered", 2, None)


def test_429_waits_retry_after_and_gives_up_after_max_attempts(
    receiver: Receiver, sqlite_store: ScoreStore
) -> None:
    receiver.plan = [(429, {"Retry-After": "3"}), 500, 500]
    sleeps = Sleeps()
    params = AlertParams(max_attempts=3, backoff_s=0.25)
    s = deliver(sqlite_store, RUN, _alerts(1), [receiver.url], SECRET, params, sleep=sleeps)
    assert s.failed == 1 and sleeps == [3.0, 0.5] and len(receiver.requests) == 3
    assert sqlite_store.deliveries(RUN)[0]["http_status"] == 500


def test_redirects_are_not_followed(receiver: Receiver, sqlite_store: ScoreStore) -> None:
    receiver.plan = [(302, {"Location": "/elsewhere"})]
    s = deliver(sqlite_store, RUN, _alerts(1), [receiver.url], SECRET, PARAMS, sleep=Sleeps())
    assert s.failed == 1 and [r["path"] for r in receiver.requests] == ["/hook?token=abc123"]


def test_down_receiver_is_recorded_as_failed_and_given_up(
    receiver: Receiver, sqlite_store: ScoreStore
) -> None:
    down = f"http://127.0.0.1:{free_port()}/hook/tok-999"
    sleeps = Sleeps()
    s = deliver(sqlite_store, RUN, _alerts(5), [down, receiver.url], SECRET, PARAMS,
                sleep=sleeps)  # fmt: skip
    assert (s.delivered, s.failed, s.webhooks) == (5, 5, 2) and len(receiver.requests) == 5
    assert "tok-999" not in s.line() and "127.0.0.1" in s.line()
    rows = [r for r in sqlite_store.deliveries(RUN) if r["webhook"] == fingerprint(down)]
    assert sorted(r["attempts"] for r in rows) == [0, 0, 4, 4, 4]  # 3 down in a row: given up
    assert all(r["status"] == "failed" and r["http_status"] is None for r in rows)
    assert sleeps == [0.5, 1.0, 2.0] * 3


def test_deliveries_are_stored_on_sqlite_and_postgresql(store: ScoreStore) -> None:  # noqa: F811
    row = {"run_id": RUN, "account_id": "A", "webhook": "f" * 16, "status": "failed",
           "attempts": 2, "http_status": 503, "error": "HTTP 503"}  # fmt: skip
    store.record_deliveries([row, {**row, "account_id": "B", "status": "delivered"}])
    assert store.delivered(RUN) == {("B", "f" * 16)} and store.delivered("other") == set()
    store.record_deliveries([{**row, "status": "delivered", "attempts": 1, "http_status": 200,
                              "error": None}])  # fmt: skip
    store.record_deliveries([row])  # a later failure does not undo a delivery
    got = {r["account_id"]: r for r in store.deliveries(RUN)}
    assert got["A"]["status"] == "delivered" and got["A"]["attempts"] == 5
    assert store.delivered(RUN) == {("A", "f" * 16), ("B", "f" * 16)}


def test_delivery_time_for_200_alerts(receiver: Receiver, sqlite_store: ScoreStore) -> None:
    """Measured: 200 alerts to a local receiver, each recorded in a SQLite store."""
    t0 = time.perf_counter()
    s = deliver(sqlite_store, RUN, _alerts(200), [receiver.url], SECRET, PARAMS, sleep=Sleeps())
    seconds = time.perf_counter() - t0
    print(f"delivered 200 alerts in {seconds:.2f} s")
    assert s.delivered == 200 and seconds < 30


# ----- the CLI ---------------------------------------------------------------------------------
def _worsen(db: Path, n: int) -> list[str]:
    """Make the stored run's `n` riskiest accounts green and safe: the next score worsens them."""
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        run = conn.execute(sa.text("SELECT run_id FROM scoring_runs WHERE backfill IS NOT 1 "
                                   "ORDER BY scored_at DESC LIMIT 1")).scalar()  # fmt: skip
        ids = [r[0] for r in conn.execute(sa.text(
            "SELECT account_id FROM scores WHERE band != 'green' AND run_id = :r "
            "ORDER BY churn_probability DESC LIMIT :n"), {"n": n, "r": run})]  # fmt: skip
        for a in ids:
            conn.execute(sa.text("UPDATE scores SET band = 'green', churn_probability = 0.01 "
                                 "WHERE account_id = :a AND run_id = :r"),
                         {"a": a, "r": run})  # fmt: skip
    engine.dispose()
    return ids


def _earlier_as_of(snapshots: Path) -> str:
    """The snapshot table's second newest as_of (ISO)."""
    dates = sorted(pd.read_parquet(snapshots, columns=["as_of"])["as_of"].unique())
    return pd.Timestamp(dates[-2]).date().isoformat()


def _newest_run_id(url: str, backfill: bool) -> str:
    st = ScoreStore(url, create=False)
    try:
        return [r for r in st.all_runs() if bool(r["backfill"]) == backfill][-1]["run_id"]
    finally:
        st.close()


@pytest.mark.slow
def test_score_sends_alerts_once_and_a_down_webhook_never_fails_it(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from cshealth.cli import main
    from tests.serving_data import serving_setup

    setup = serving_setup(tmp_path_factory).copy_state(tmp_path / "state")
    raw = yaml.safe_load(setup.params.read_text())
    raw["alerts"] = {"churn_probability_above": 0.99, "backoff_s": 0, "max_attempts": 2}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    worse = _worsen(setup.store_db, 4)
    assert len(worse) == 4
    for k, v in {**setup.env(), "CSHEALTH_ALERT_WEBHOOKS": receiver.url,
                 "CSHEALTH_ALERT_SECRET": SECRET}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    argv = ["--params", str(params), "score", "--features", str(setup.snapshots)]

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "alerts: 4 selected, 4 delivered to 1 webhook, 0 failed" in out, out
    assert sorted(b["account_id"] for b in receiver.bodies()) == sorted(worse)
    assert all(verify(SECRET, r["body"], r["headers"]) for r in receiver.requests)
    assert {b["band_before"] for b in receiver.bodies()} == {"green"}
    assert main(["--params", str(params), "alerts"]) == 0  # re-send: all delivered before
    assert "4 already delivered" in capsys.readouterr().out and len(receiver.requests) == 4
    assert main(argv) == 0  # nothing worsened since: no alert
    assert "alerts: 0 selected" in capsys.readouterr().out and len(receiver.requests) == 4
    # a past month scored after the newest: history only, no alerts, and none on request
    month = _earlier_as_of(setup.snapshots)
    assert main([*argv, "--as-of", month]) == 0
    out = capsys.readouterr().out
    assert "a backfill run" in out and "alerts:" not in out and len(receiver.requests) == 4
    backfill = _newest_run_id(setup.db_url, backfill=True)
    assert main(["--params", str(params), "alerts", "--run", backfill]) == 2
    assert "backfill run" in capsys.readouterr().err

    _worsen(setup.store_db, 2)
    monkeypatch.setenv("CSHEALTH_ALERT_WEBHOOKS", f"http://127.0.0.1:{free_port()}/down")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "alerts: 2 selected, 0 delivered to 1 webhook, 2 failed" in out, out
    assert "ConnectionRefusedError" in out
    monkeypatch.delenv("CSHEALTH_ALERT_SECRET")
    assert main(argv) == 2  # webhooks without a secret: refused before scoring
    assert "but CSHEALTH_ALERT_SECRET is not" in capsys.readouterr().err
    check = ScoreStore(setup.db_url, create=False)
    assert check.count_runs() == 5  # the set-up's run, three scored here and the backfill
    check.close()
