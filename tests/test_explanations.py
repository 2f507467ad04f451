"""Explanations a CSM can act on: reasons with healthy peers, context, plays, what changed.

Pure tiers first (peer tables, the playbook, its configuration), then model behaviour on
the shared trained set-up (`tests/serving_data.py`): two scoring runs a month apart into
a fresh store, checked the way a CSM reads them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from features.contract import Col
from features.meta import Family, Feature, Good, Role
from features.snapshots import SnapshotTable
from serving.explanations import PER_SEAT, Playbook, peer_group, peer_table, peer_value
from serving.settings import ExplainParams, Play, PlayCondition
from serving.store import ScoreStore
from tests.serving_data import ServingSetup, environ, serving_setup


def _feature(name: str, family: Family = Family.USAGE, role: Role = Role.ACTIONABLE,
             per_seat: bool = False) -> Feature:  # fmt: skip
    return Feature(name, family, f"{name}.", "users", Good.HIGHER, "{value}", role=role,
                   per_seat=per_seat)  # fmt: skip


# ----- peers ---------------------------------------------------------------------------------
def test_peer_table_prefers_healthy_accounts_of_the_segment() -> None:
    rows = pd.DataFrame({
        "segment": ["smb"] * 3 + ["enterprise"] * 3,
        "seats": [10.0, 10.0, 10.0, 100.0, 100.0, 100.0],
        "active_users_30d": [8.0, 6.0, 1.0, 90.0, 70.0, 5.0],
    })  # fmt: skip
    feats = [_feature("active_users_30d", per_seat=True), _feature("seats", Family.COMMERCIAL,
                                                                   Role.CONTEXT)]  # fmt: skip
    bands = np.array(["green", "green", "red", "green", "green", "red"])
    table = peer_table(rows, feats, bands, min_peers=2)
    assert set(table["segments"]) == {"smb", "enterprise"}
    values, group = peer_group(table, "smb")
    assert group == "healthy SMB accounts" and values["active_users_30d"] == 7.0
    assert values["active_users_30d" + PER_SEAT] == pytest.approx(0.7)
    # per seat: the healthy SMB utilisation applied to this account's 40 seats
    assert peer_value(feats[0], values, 40.0) == pytest.approx(28.0)
    assert peer_value(feats[0], values, None) == 7.0
    # too few healthy accounts in a segment: all healthy accounts; none: every account
    table = peer_table(rows, feats, bands, min_peers=3)
    assert table["segments"] == {}
    assert peer_group(table, "smb")[1] == "healthy accounts"
    table = peer_table(rows, feats, np.array(["red"] * 6), min_peers=1)
    values, group = peer_group(table, "smb")
    assert group == "all accounts" and values["active_users_30d"] == pytest.approx(7.0)
    assert peer_group(table, None)[1] == "all accounts"


def test_peer_table_is_json_safe_when_a_feature_has_no_values() -> None:
    rows = pd.DataFrame({"segment": ["smb", "smb"], "nps_last": [np.nan, np.nan]})
    table = peer_table(rows, [_feature("nps_last", Family.SENTIMENT)],
                       np.array(["green", "green"]), min_peers=1)  # fmt: skip
    assert table["segments"]["smb"]["values"]["nps_last"] is None


# ----- the playbook ---------------------------------------------------------------------------
def test_a_feature_goes_to_the_first_play_naming_it_else_its_family() -> None:
    soon = PlayCondition(feature="days_to_renewal", at_most=90, bands=("red",))
    plays = (Play(play="Escalation review", description="d", features=("escalations_*",)),
             Play(play="Support check", description="d", families=("support",)),
             Play(play="Other support", description="d", families=("support",)),
             Play(play="Renewal", description="d", when=soon))  # fmt: skip
    feats = [_feature("escalations_90d", Family.SUPPORT), _feature("open_tickets", Family.SUPPORT),
             _feature("active_users_30d")]  # fmt: skip
    book = Playbook.build(plays, feats)
    assert book.owner == (0, 1, -1)
    assert book.applies(plays[3], {"days_to_renewal": 30.0}, "red")
    assert not book.applies(plays[3], {"days_to_renewal": 30.0}, "yellow")
    assert not book.applies(plays[3], {"days_to_renewal": 120.0}, "red")
    assert not book.applies(plays[3], {"days_to_renewal": None}, "red")


def test_a_play_must_name_what_it_answers() -> None:
    with pytest.raises(ValidationError, match="names no families"):
        Play(play="Nothing", description="d")
    with pytest.raises(ValidationError, match="unknown families"):
        Play(play="Typo", description="d", families=("usgae",))
    assert len(ExplainParams().playbook) >= 5


# ----- model behaviour: two runs a month apart ------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The set-up's champions score the month before the newest, then the newest."""
    from cshealth.config import load_config
    from serving.batch import score_latest
    from serving.predictor import ModelPair, Scorer
    from training import tracking

    setup: ServingSetup = serving_setup(tmp_path_factory)
    cfg = load_config(setup.params)
    with environ(setup.env()):
        (churn, cv), (exp, ev) = (tracking.load_champion(t) for t in ("churn", "expansion"))
    scorer = Scorer(ModelPair(churn, exp, str(cv), str(ev)), cfg.health, cfg.explanations)
    snaps = SnapshotTable.read(setup.snapshots)
    frame = snaps.frame
    days = sorted(frame[Col.AS_OF].unique())
    store = ScoreStore(f"sqlite:///{tmp_path_factory.mktemp('explain') / 'scores.db'}")
    first = score_latest(frame[frame[Col.AS_OF] <= days[-2]], scorer, store)
    second = score_latest(frame, scorer, store)
    out = {"scorer": scorer, "cfg": cfg, "snaps": snaps,
           "before": {s["account_id"]: s for s in store.run_scores(first["run_id"])},
           "after": {s["account_id"]: s for s in store.run_scores(second["run_id"])},
           "run": store.recent_runs(1)[0]}  # fmt: skip
    store.close()
    return out


def _features(runs: dict[str, Any]) -> dict[str, Feature]:
    return {f.name: f for f in runs["scorer"].models.churn.features}


def test_reasons_are_actionable_risks_with_the_account_and_its_peers(runs: dict) -> None:
    feats, items = _features(runs), list(runs["after"].values())
    ep: ExplainParams = runs["cfg"].explanations
    shown = 0
    for item in items:
        assert len(item["reasons"]) <= ep.top_reasons
        impacts = [r["impact"] for r in item["reasons"]]
        assert impacts == sorted(impacts, reverse=True) and all(x > 0 for x in impacts)
        for r in item["reasons"] + item["expansion_reasons"]:
            assert feats[r["feature"]].role == Role.ACTIONABLE, r
            own, peer = r["sentence"].split("; ", 1)
            assert re.search(r"\d", own), r  # the account's number ...
            assert peer.startswith(r["peer_group"]), r
            assert r["peer_value"] is None or re.search(r"\d", peer), r  # ... and its peers'
            shown += 1
        for c in item["context"]:
            assert feats[c["feature"]].role == Role.CONTEXT, c
    assert shown > len(items)  # most accounts have reasons
    red = [i for i in items if i["band"] == "red"]
    assert red and all(i["reasons"] for i in red)
    # peers are healthy accounts of the segment where enough of them exist
    groups = {r["peer_group"] for i in items for r in i["reasons"]}
    assert any(g.startswith("healthy ") for g in groups), groups


def test_peers_are_stored_with_the_run_and_are_green_medians(runs: dict) -> None:
    run, items = runs["run"], runs["after"]
    peers = run["peers"]
    assert run["base_health"] == pytest.approx(runs["scorer"].base_health)
    green = [a for a, i in items.items() if i["band"] == "green"]
    assert peers["healthy"]["accounts"] == len(green)
    newest = runs["snaps"].frame.set_index(Col.ACCOUNT_ID)
    newest = newest[newest[Col.AS_OF] == newest[Col.AS_OF].max()]
    expected = newest.loc[green, "active_users_30d"].median()
    assert peers["healthy"]["values"]["active_users_30d"] == pytest.approx(expected)


def test_plays_follow_the_playbook_ordered_by_the_risk_they_address(runs: dict) -> None:
    feats, ep = _features(runs), runs["cfg"].explanations
    names = {p.play: p for p in ep.playbook}
    seen = set()
    for item in runs["after"].values():
        impacts = [p["impact"] for p in item["plays"]]
        assert impacts == sorted(impacts, reverse=True) and all(x > 0 for x in impacts)
        assert len(item["plays"]) <= ep.top_plays
        for p in item["plays"]:
            play = names[p["play"]]
            seen.add(p["play"])
            if play.when is None:
                assert all(feats[f].role == Role.ACTIONABLE for f in p["features"])
            else:
                assert item["band"] in play.when.bands
    assert len(seen) >= 3, seen


def test_what_changed_compares_with_the_previous_run(runs: dict) -> None:
    before, after = runs["before"], runs["after"]
    both = [a for a in after if a in before]
    assert both
    changed = 0
    for a in both:
        ch = after[a]["changes"]
        assert ch is not None and ch["previous_run_id"]
        assert ch["health_before"] == pytest.approx(before[a]["health_score"], abs=0.05)
        assert ch["health_after"] == pytest.approx(after[a]["health_score"], abs=0.05)
        assert ch["sentence"].startswith(
            f"Health {before[a]['health_score']:.0f} → {after[a]['health_score']:.0f}")
        assert after[a]["health_change"] == pytest.approx(
            after[a]["health_score"] - before[a]["health_score"], abs=0.051)
        for f in ch["features"]:
            assert f["before"] != f["after"] and f["sentence"] in ch["sentence"]
        changed += bool(ch["features"])
        assert all(math.copysign(1, v) > 0 for v in ch["components"].values() if v == 0)
        comp = sum(ch["components"].values())
        assert comp == pytest.approx(after[a]["health_score"] - before[a]["health_score"], abs=0.5)
    assert changed > len(both) / 2
    new = [a for a in after if a not in before]
    assert all(after[a]["changes"] is None for a in new)
    assert all(b["changes"] is None for b in before.values())  # the first run of this store


def test_descriptors_are_recorded_with_the_run(runs: dict) -> None:
    items = list(runs["after"].values())
    assert all(i["name"] for i in items)
    assert {i["segment"] for i in items} <= {"smb", "mid_market", "enterprise"}
    assert any(i["csm_id"] for i in items) and any(i["csm_id"] is None for i in items)


def test_an_older_store_gains_the_new_columns(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as con:  # the 0.2 layout
        con.execute("CREATE TABLE scoring_runs (run_id VARCHAR(64) PRIMARY KEY, scored_at "
                    "DATETIME NOT NULL, as_of DATE NOT NULL, churn_model_version VARCHAR(32) NOT "
                    "NULL, expansion_model_version VARCHAR(32) NOT NULL, accounts INTEGER NOT "
                    "NULL)")  # fmt: skip
        con.execute("CREATE TABLE scores (run_id VARCHAR(64), account_id VARCHAR(128), as_of "
                    "DATE NOT NULL, scored_at DATETIME NOT NULL, churn_probability FLOAT NOT NULL,"
                    " expansion_probability FLOAT NOT NULL, health_score FLOAT NOT NULL, band "
                    "VARCHAR(16) NOT NULL, health_change FLOAT, components JSON NOT NULL, reasons"
                    " JSON NOT NULL, model_version JSON NOT NULL, missing_features JSON NOT NULL,"
                    " PRIMARY KEY (run_id, account_id))")  # fmt: skip
        con.execute("INSERT INTO scoring_runs VALUES ('r0', '2026-01-01 00:00:00', '2026-01-01', "
                    "'1', '1', 1)")  # fmt: skip
        con.execute("INSERT INTO scores VALUES ('r0', 'A', '2026-01-01', '2026-01-01 00:00:00', "
                    "0.1, 0.2, 70.0, 'green', NULL, '{}', '[]', '{}', '[]')")  # fmt: skip
    store = ScoreStore(f"sqlite:///{db}")
    old = store.latest_scores(["A"])["A"]
    assert old["plays"] is None and old["name"] is None and old["health_score"] == 70.0
    item = {**old, "as_of": "2026-02-01", "health_score": 60.0, "name": "Acme", "plays": []}
    store.write_run({"run_id": "r1", "as_of": "2026-02-01", "churn_model_version": "2",
                     "expansion_model_version": "2", "peers": {"all": {}}}, [item], [])  # fmt: skip
    new = store.latest_scores(["A"])["A"]
    assert new["name"] == "Acme" and new["health_change"] == -10.0
    assert store.recent_runs(1)[0]["peers"] == {"all": {}}
    store.close()
