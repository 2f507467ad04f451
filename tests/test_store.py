"""Score store and health mapping: SQLite and a real PostgreSQL server (never skipped)."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from serving.health import band, component_points, health_score
from serving.settings import HealthParams
from serving.store import ScoreStore, StoreError, db_url

PG_URL = os.environ.get("CSHEALTH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ScoreStore]:
    """An empty store on SQLite, or in a throw-away schema of the PostgreSQL server."""
    if request.param == "sqlite":
        s = ScoreStore(f"sqlite:///{tmp_path / 'scores.db'}")
        yield s
        s.close()
        return
    schema = f"cshealth_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.engine.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    s = ScoreStore(url.render_as_string(hide_password=False))
    try:
        yield s
    finally:
        s.close()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _item(account: str, health: float) -> dict:
    return {
        "account_id": account, "as_of": "2026-01-02", "churn_probability": 0.1,
        "expansion_probability": 0.2, "health_score": health, "band": "yellow",
        "health_change": None, "components": {"usage": -3.5, "support": 1.0},
        "reasons": [{"feature": "f", "family": "usage", "value": 1.0, "impact": 0.2,
                     "sentence": "Usage fell"}],
        "model_version": {"churn": "1", "expansion": "1"}, "missing_features": ["x"],
    }  # fmt: skip


def _run(i: int) -> dict:
    return {"run_id": f"run{i}", "scored_at": dt.datetime(2026, 1, 2, 3, i),
            "as_of": dt.date(2026, 1, 2), "churn_model_version": "1",
            "expansion_model_version": "1"}  # fmt: skip


def test_runs_append_and_track_change(store: ScoreStore) -> None:
    assert store.latest_run() is None and store.latest_scores(["A"]) == {}
    feats = [{"account_id": "A", "as_of": "2026-01-02", "features": {"seats": 3.0, "plan": "pro"}}]
    assert store.write_run(_run(1), [_item("A", 60.0), _item("B", 80.0)], feats) == 2
    first = store.latest_scores(["A", "B", "nope"])
    assert set(first) == {"A", "B"} and first["A"]["health_change"] is None
    assert first["A"]["components"] == {"usage": -3.5, "support": 1.0}
    assert first["A"]["reasons"][0]["sentence"] == "Usage fell"
    store.write_run(_run(2), [_item("A", 52.5)], [])
    latest = store.latest_scores(["A", "B"])
    assert latest["A"]["health_score"] == 52.5 and latest["A"]["health_change"] == -7.5
    assert "B" not in latest  # B was not scored in the newest run
    assert [h["health_score"] for h in store.history("A")] == [60.0, 52.5]  # history kept
    assert store.count_runs() == 2 and store.latest_run()["run_id"] == "run2"
    assert store.features(["A"]) == {}  # replaced by run 2, which stored none


def test_unrounded_health_scores_are_kept_exactly(store: ScoreStore) -> None:
    """Scores arrive unrounded (rounding ties accounts): the store keeps every digit."""
    first, second = 61.23456789012345, 58.98765432109876
    item = {**_item("A", first), "components": {"usage": -3.1416, "support": 0.0001}}
    store.write_run(_run(1), [item], [])
    got = store.latest_scores(["A"])["A"]
    assert got["health_score"] == first
    assert got["components"] == {"usage": -3.1416, "support": 0.0001}
    store.write_run(_run(2), [_item("A", second)], [])
    got = store.latest_scores(["A"])["A"]
    assert got["health_score"] == second
    assert got["health_change"] == pytest.approx(second - first, abs=0.05)
    assert [h["health_score"] for h in store.history("A")] == [first, second]


def test_failed_write_leaves_nothing(store: ScoreStore) -> None:
    store.write_run(_run(1), [_item("A", 60.0)], [])
    bad = _item("B", 70.0)
    del bad["band"]
    with pytest.raises(KeyError):
        store.write_run(_run(2), [_item("A", 10.0), bad], [])
    assert store.count_runs() == 1
    assert store.latest_scores(["A"])["A"]["health_score"] == 60.0
    dup = [_item("C", 50.0), _item("C", 40.0)]  # the database rejects a duplicate key
    with pytest.raises(StoreError, match=r"writing run run3 .* failed: .*scores"):
        store.write_run(_run(3), dup, [])
    assert store.count_runs() == 1


def test_latest_features_are_kept_for_online_lookup(store: ScoreStore) -> None:
    feats = [{"account_id": "A", "as_of": "2026-01-02", "features": {"seats": 3.0, "x": None}}]
    store.write_run(_run(1), [_item("A", 60.0)], feats)
    got = store.features(["A", "B"])
    assert got["A"]["features"] == {"seats": 3.0, "x": None} and got["A"]["as_of"] == "2026-01-02"


def test_default_url_is_a_sqlite_file(tmp_path: Path) -> None:
    url = db_url(tmp_path / "sub" / "scores.db")
    assert url == f"sqlite:///{tmp_path / 'sub' / 'scores.db'}" and (tmp_path / "sub").is_dir()
    assert db_url(tmp_path, "postgresql+psycopg://u:secret@h/db") == (
        "postgresql+psycopg://u:secret@h/db"
    )
    assert "secret" not in repr(ScoreStore("postgresql+psycopg://u:secret@h/db", create=False))


def test_health_mapping_is_monotone_and_documented() -> None:
    hp = HealthParams(midpoint_churn_probability=0.2, red_below=40, yellow_below=70)
    p = np.linspace(0, 1, 101)
    h = health_score(p, hp)
    assert np.all(np.diff(h) < 0) and h[0] <= 100 and h[-1] >= 0
    assert health_score(np.array([0.2]), hp)[0] == pytest.approx(50.0)
    # odds(p) = 3 x odds(midpoint) -> 100 / (1 + 3) = 25
    assert health_score(np.array([0.2 * 3 / (0.8 + 0.2 * 3)]), hp)[0] == pytest.approx(25.0)
    assert band(np.array([10, 39.9, 40, 69.9, 70, 100]), hp).tolist() == [
        "red", "red", "yellow", "yellow", "green", "green"]  # fmt: skip
    with pytest.raises(ValueError, match="red_below"):
        HealthParams(red_below=80, yellow_below=70)


def test_component_points_sum_to_health_change() -> None:
    fams = np.array([[0.4, -0.1, 0.2], [0.0, 0.0, 0.0], [-0.3, -0.3, 0.1]])
    health = np.array([40.0, 85.0, 95.0])
    pts = component_points(fams, health, np.full(3, 85.0))
    assert np.allclose(pts.sum(axis=1), health - 85.0)
    assert pts[0, 0] < 0 < pts[0, 1]  # risk-raising usage costs health points
    assert np.all(pts[1] == 0)


def test_listing_filters_the_newest_run_by_csm_band_and_segment(store: ScoreStore) -> None:
    def item(account: str, health: float, band: str, csm: str | None) -> dict:
        return {**_item(account, health), "band": band, "csm_id": csm, "segment": "smb",
                "name": f"Name {account}", "plays": [{"play": "p", "description": "d",
                                                       "impact": 0.1, "features": []}]}  # fmt: skip

    store.write_run(_run(1), [item("A", 10.0, "red", "c1")], [])
    store.write_run(_run(2), [item("A", 40.0, "red", "c1"), item("B", 30.0, "red", "c1"),
                              item("C", 20.0, "red", "c2"), item("D", 90.0, "green", None)],
                    [], annotate=lambda items, prev_run, prev: items[0].update(
                        changes={"sentence": f"from {prev['A']['health_score']:.0f}",
                                 "previous_run_id": prev_run["run_id"]}))  # fmt: skip
    total, page = store.list_latest(csm_id="c1", band="red", limit=10)
    assert total == 2 and [p["account_id"] for p in page] == ["B", "A"]  # lowest health first
    assert page[1]["changes"] == {"sentence": "from 10", "previous_run_id": "run1"}
    assert page[1]["name"] == "Name A" and page[1]["plays"][0]["play"] == "p"
    total, page = store.list_latest(band="red", limit=1, offset=1)
    assert total == 3 and [p["account_id"] for p in page] == ["B"]
    assert store.list_latest(segment="enterprise") == (0, [])
    assert store.list_latest(run_id="run1")[0] == 1
