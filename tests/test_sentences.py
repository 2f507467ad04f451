"""Feature sentences read as English for every feature and any value.

Pure and fast: builds the feature catalog from metadata only, no data files.
"""

from __future__ import annotations

import json
import math
import re

import pytest

from features.contract import TABLES
from features.meta import Feature, Role, by_name, from_dict, humanise, to_dict
from features.pipeline import feature_catalog
from features.settings import FeatureParams, Windows

NUMBERS = [0, 1, 2, -1, -0.0001, 0.0001, 0.5, 0.995, 1.0001, 12.3456, 1e15, -1e15,
           None, math.nan, math.inf, -math.inf, True, False, "x"]  # fmt: skip
CATEGORIES = ["mid_market", "smb", "enterprise", "", "x" * 200, "Ünïcode", None, math.nan]
SEATS = [None, 40, 1, 0, math.nan]
GROUP = "healthy mid-market accounts"

CONTEXT = {"segment", "industry", "region", "plan", "tenure_days", "days_to_renewal",
           "subscription_changes_365d", "mrr_usd", "seats", "mrr_change_90d", "seat_change_90d",
           "has_csm"}  # fmt: skip

PARAMS = [
    FeatureParams(key_event_types=("export",)),
    FeatureParams(windows=Windows(short=5, medium=14, long=60), sentiment_window_days=180,
                  key_event_types=("export",)),
    FeatureParams(windows=Windows(short=1, medium=2, long=3), sentiment_window_days=3),
]  # fmt: skip


def catalog(params: FeatureParams) -> list[Feature]:
    """Every feature produced when all tables are present."""
    return feature_catalog(params, set(TABLES))


ALL = [f for p in PARAMS for f in catalog(p)]


def texts(f: Feature) -> list[tuple[str, str]]:
    """(kind, text) for the sentence, peer text and change sentence over the value ranges."""
    values = CATEGORIES if f.categorical else NUMBERS
    out = []
    for v in values:
        for s in SEATS:
            out.append(("sentence", f.sentence(v, s)))
            out.append(("peer", f.peer_text(v, GROUP, s)))
        out.append(("value", f.format_value(v)))
        for w in values[:6]:
            out.append(("change", f.change_sentence(v, w)))
            out.append(("change", f.change_sentence(w, v, 40, 35)))
            out.append(("change", f.change_sentence(v, w, 40, 40)))
    return out


def plural(f: Feature) -> str:
    """The feature's plural noun."""
    return f.plural or f.noun + "s"


BAD = [
    (re.compile(r"(?<![\d.,])[-−]0(?![.,]?\d*[1-9])"), "negative zero"),
    (re.compile(r"\+0(?:[.,]0*)?%?(?!\d*[.,]?\d*[1-9])"), "plus zero"),
    (re.compile(r"\b(nan|none|inf|infinity)\b", re.I), "missing-value token"),
    (re.compile(r"[{}]"), "unfilled brace"),
    (re.compile(r"\d[eE][+-]?\d"), "scientific notation"),
    (re.compile(r"  "), "double space"),
    (re.compile(r"^\s|\s$"), "surrounding space"),
    (re.compile(r"\.$"), "trailing period"),
]


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.name)
def test_sentences_follow_the_grammar_rules(f: Feature) -> None:
    for kind, text in texts(f):
        assert isinstance(text, str) and text, (f.name, kind)
        for pattern, why in BAD:
            assert not pattern.search(text), (f.name, kind, why, text)
        if f.noun:
            one = re.compile(rf"(?<![\d.,\-−])1 {re.escape(plural(f))}\b")
            assert not one.search(text), (f.name, kind, text)
        if kind == "sentence":
            assert not text[0].islower(), (f.name, text)


@pytest.mark.parametrize("f", [f for f in ALL if f.noun], ids=lambda f: f.name)
def test_singular_and_plural_nouns(f: Feature) -> None:
    one = f"1 {f.noun}" if f.decimals == 0 else f"1.{'0' * f.decimals} {plural(f)}"
    texts = [f.peer_text(1, GROUP)] + [f.sentence(1)] * ("{amount}" in f.template)
    assert all(one in t for t in texts), (f.name, texts)
    assert f"{plural(f)}" in f.peer_text(2, GROUP), f.name


def test_no_negative_zero_or_plus_zero() -> None:
    cat = by_name(catalog(PARAMS[0]))
    assert cat["events_trend_30d"].format_value(-0.0001) == "0%"
    assert cat["events_trend_30d"].format_value(0.0001) == "0%"
    assert cat["events_trend_30d"].format_value(0.12) == "+12%"
    assert cat["key_feature_user_share_30d"].format_value(-0.0001) == "0%"
    assert cat["mrr_usd"].format_value(-0.0001) == "$0"
    assert cat["nps_365d"].format_value(-0.4) == "0"
    assert cat["nps_trend_182d"].format_value(-0.01) == "0.0"


def test_examples_from_the_contract() -> None:
    cat = by_name(catalog(PARAMS[0]))
    au = cat["active_users_30d"]
    assert au.sentence(1) == "1 user active in the last 30 days"
    assert au.sentence(12.0) == "12 users active in the last 30 days"
    assert au.sentence(3, seats=40) == "3 of 40 seats active in the last 30 days"
    assert au.sentence(None) == "No data on active users in the last 30 days"
    assert au.peer_text(28, GROUP, 40) == "healthy mid-market accounts: 28 of 40"
    assert au.peer_text(28, GROUP) == "healthy mid-market accounts: 28 users"
    assert au.peer_text(math.nan, GROUP, 40) == "healthy mid-market accounts: no data"
    assert au.change_sentence(31, 12) == "active users in the last 30 days fell from 31 to 12"
    assert au.change_sentence(None, 12) == f"{au.short}: no data before, now 12"
    assert cat["open_tickets"].change_sentence(0, 2) == "open tickets rose from 0 to 2"
    assert cat["nps_last"].change_sentence(8, 3) == "latest NPS score moved from 8 / 10 to 3 / 10"
    assert cat["days_since_last_activity"].sentence(1) == "No product usage for 1 day"
    assert cat["days_since_last_activity"].sentence(2) == "No product usage for 2 days"
    assert cat["events_trend_30d"].sentence(-0.4) == "Usage fell 40% over the last 30 days"
    assert cat["events_trend_30d"].sentence(0.12) == "Usage rose 12% over the last 30 days"
    assert cat["events_trend_30d"].sentence(0.001) == "Usage held steady over the last 30 days"
    assert cat["has_csm"].sentence(0) == "No CSM assigned (tech-touch)"
    assert cat["has_csm"].sentence(1) == "A CSM is assigned"
    assert cat["has_csm"].format_value(1) == "yes" and cat["has_csm"].format_value(0) == "no"
    assert cat["subscription_changes_365d"].sentence(1) == "1 contract change in the last year"
    assert cat["mrr_usd"].format_value(1200) == "$1,200"
    assert cat["nps_mean_365d"].format_value(3.5) == "3.5 / 10"
    assert cat["key_feature_user_share_30d"].format_value(0.45) == "45%"
    assert cat["events_30d"].format_value(1e15) == "1,000,000,000,000,000"
    assert cat["segment"].peer_text("smb", "healthy accounts") == "healthy accounts: SMB"
    assert cat["overdue_unmet_goals"].sentence(1) == "1 customer goal is overdue and unmet"
    assert cat["overdue_unmet_goals"].sentence(3) == "3 customer goals are overdue and unmet"


def test_booleans_in_words() -> None:
    f = by_name(catalog(PARAMS[0]))["has_csm"]
    for v in (0, 1, 0.0, 1.0, True, False):
        for text in (f.sentence(v), f.peer_text(v, GROUP), f.change_sentence(v, 1 - v)):
            assert not re.search(r"(?<![\w.])[01](?![\w.])", text), text
    assert f.peer_text(1, GROUP) == "healthy mid-market accounts: a CSM is assigned"
    assert f.change_sentence(1, 0) == "CSM assigned changed from yes to no"


def test_per_seat_reads_n_of_m_seats() -> None:
    per_seat = [f for f in ALL if f.per_seat]
    assert per_seat and all(f.name.startswith("active_users_") for f in per_seat)
    assert {f.name for f in ALL if f.name.startswith("active_users_") and "ratio" not in f.name} \
        == {f.name for f in per_seat}
    for f in per_seat:
        assert f.sentence(3, 40).startswith("3 of 40 seats active in the last")
        assert f.sentence(1, 1).startswith("1 of 1 seat active in the last")
        assert f.change_sentence(31, 12, 40, 40).endswith("from 31 to 12 of 40 seats")
        assert f.change_sentence(31, 12, 40, 35).endswith("from 31 of 40 seats to 12 of 35 seats")


@pytest.mark.parametrize("f", [f for f in ALL if f.is_trend], ids=lambda f: f.name)
def test_trends_fall_rise_or_hold(f: Feature) -> None:
    assert " fell " in f.sentence(-0.4) and " rose " in f.sentence(0.4)
    assert " held steady" in f.sentence(0) and " held steady" in f.sentence(-0.0001)
    assert not re.search(r"[-+]\d", f.sentence(-0.4) + f.sentence(0.4)), f.name


def test_names_and_sentences_follow_the_windows() -> None:
    cat = by_name(catalog(PARAMS[1]))
    assert cat["active_users_5d"].sentence(2) == "2 users active in the last 5 days"
    assert cat["tickets_60d"].sentence(1) == "1 support ticket opened in the last 60 days"
    assert cat["events_trend_14d"].sentence(-0.5) == "Usage fell 50% over the last 14 days"
    rose = "Mean NPS score rose 1.5 points over the last 90 days"
    assert cat["nps_trend_90d"].sentence(1.5) == rose
    tiny = by_name(catalog(PARAMS[2]))
    assert tiny["active_users_1d"].sentence(2) == "2 users active in the last day"
    assert tiny["nps_trend_1d"].sentence(-1) == "Mean NPS score fell 1.0 points over the last day"


@pytest.mark.parametrize("params", PARAMS[:2])
def test_every_feature_has_a_role_and_context_is_exactly_the_contract(
    params: FeatureParams,
) -> None:
    feats = catalog(params)
    assert all(isinstance(f.role, Role) for f in feats)
    assert {f.name for f in feats if f.role is Role.CONTEXT} == CONTEXT
    for f in feats:
        assert f.short and f.short == f.short.strip() and not f.short.endswith("."), f.name


def test_humanise() -> None:
    assert humanise("mid_market") == "mid-market"
    assert humanise("smb") == "SMB"
    assert humanise("enterprise") == "enterprise"
    assert humanise("financial_services") == "financial services"
    assert humanise("a__b ") == "a b"


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.name)
def test_metadata_round_trips(f: Feature) -> None:
    assert from_dict(to_dict(f)) == f
    assert from_dict(json.loads(json.dumps(to_dict(f)))) == f


def test_old_artifact_dicts_still_load() -> None:
    old = {"name": "active_users_30d", "family": "usage",
           "description": "Distinct users active in the last 30 days.", "unit": "users",
           "good": "higher", "template": "{value:.0f} users active in the last 30 days",
           "categorical": False, "min_value": 0, "max_value": None,
           "some_future_key": 1}  # fmt: skip
    f = from_dict(old)
    assert f.role is Role.ACTIONABLE and f.label == "" and not f.per_seat
    assert f.sentence(12.0) == "12 users active in the last 30 days"
    assert f.sentence(None) == "No data on distinct users active in the last 30 days"
    assert f.change_sentence(3, 1) == "distinct users active in the last 30 days fell from 3 to 1"
    assert "{" not in f.peer_text(2, GROUP)


def test_old_commercial_metadata_loads_as_context() -> None:
    old = {"name": "days_to_renewal", "family": "commercial", "description": "Days to renewal.",
           "unit": "days", "good": "neutral",
           "template": "Renewal in {value:.0f} days"}  # fmt: skip
    assert from_dict(old).role is Role.CONTEXT
