"""The leadership report: self-contained HTML, rendered for real in headless Chromium."""

from __future__ import annotations

import datetime as dt
import html as htmllib
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from cshealth.report import ReportData, collect, money, portfolio, render
from features.contract import Col
from serving.store import ScoreStore
from serving.waterfall import SVG_NS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOSTILE = "<script>alert('x')</script> & \"Sons\""  # an account name is data, not markup
HOSTILE_ID = "D4<b>"
ACCOUNTS = [  # id, name, segment, csm, mrr, p_churn, p_exp, health, band, previous health
    ("A1", "Acme Labs", "enterprise", "csm_7", 50_000.0, 0.02, 0.30, 88.0, "green", 90.0),
    ("B2", "Blue Retail", "smb", None, 300.0, 0.40, 0.02, 21.0, "red", 45.0),
    ("C3", "Cedar Health", "mid_market", "csm_7", 2_000.0, 0.12, 0.10, 56.5, "yellow", 50.0),
    (HOSTILE_ID, HOSTILE, None, "csm_<9>", 800.0, 0.05, 0.05, 70.0, "green", 60.0),
]
FELL = "active users fell from 31 to 4"
BASE_HEALTH = 63.0  # the average account's health, recorded with the newest run


POOLED = {  # one contender's pooled backtest metrics, as `cshealth train` writes them
    "roc_auc": 0.7662, "roc_auc_lo": 0.7121, "roc_auc_hi": 0.8154, "pr_auc": 0.2,
    "brier": 0.0567, "ece": 0.0231, "top_decile_lift": 3.24, "top_decile_recall": 0.324,
    "top_decile_arr_share": 0.146, "rows": 3000, "positives": 187,
}  # fmt: skip
ORIGINS = ["2025-05-01", "2025-06-01", "2025-07-01", "2025-08-01", "2025-09-01", "2025-10-01"]
#: metrics.json of `cshealth train` (`TrainResult.report()`): per target the pooled
#: walk-forward backtest, its intervals, the per-origin table and the warnings
METRICS = {
    t: {
        "evaluation": "walk-forward backtest (pooled out-of-time predictions)",
        "label": f"{t}_90d", "horizon_days": 90, "origins": len(ORIGINS),
        "first_origin": ORIGINS[0], "last_origin": ORIGINS[-1], "rows": 3000, "positives": 187,
        "trained_on_labels_up_to": "2025-12-30", "champion_rows": 9876,
        "champion_positives": 640, "trees": 143, "calibration": "platt",
        "monotone_constraints": False,
        "warnings": [f"{t}: only a test warning about positives"],
        "contenders": {m: dict(POOLED) for m in ("lightgbm", "logistic", "rules")},
        "per_origin": {
            day: {"train_rows": 1000 + 111 * i, "rows": 500, "positives": 31 + i, "trees": 140,
                  "lightgbm_roc_auc": 0.7512, "logistic_roc_auc": 0.70,
                  "rules_roc_auc": 0.65}
            for i, day in enumerate(ORIGINS)
        },
    }
    for t in ("churn", "expansion")
}  # fmt: skip


def _item(a: tuple, health: float, band: str, latest: bool) -> dict:
    """A score item in the shape `cshealth score` stores (descriptors, reasons, plays, changes)."""
    return {
        "account_id": a[0],
        "as_of": "2026-01-02",
        "name": a[1],
        "segment": a[2],
        "csm_id": a[3],
        "churn_probability": a[5],
        "expansion_probability": a[6],
        "health_score": health,
        "band": band,
        "health_change": None,
        "components": {"usage": -12.5, "outcomes": 3.0, "support": -2.0},
        "reasons": [
            {
                "feature": "active_users_30d",
                "family": "usage",
                "value": 4.0,
                "impact": 0.5,
                "sentence": f"Active users of {a[1]} fell 45% in 30 days",
                "peer_value": 31.0,
                "peer_group": "healthy mid-market accounts",
            }
        ],
        "expansion_reasons": [],
        "context": [
            {"feature": "tenure_days", "family": "commercial", "value": 400.0, "impact": 0.1,
             "sentence": "Customer for 400 days"}
        ],
        "plays": [
            {"play": f"Adoption workshop for {a[1]}", "description": "Walk the admins through "
             "the features their peers use most.", "impact": 0.5, "features": ["active_users_30d"]},
            {"play": "Executive check-in", "description": "Meet the sponsor.", "impact": 0.2,
             "features": ["nps_last"]},
        ],
        "changes": {
            "previous_run_id": "r0", "previous_as_of": "2026-01-02", "health_before": a[9],
            "health_after": health, "band_before": "yellow",
            "sentence": f"Health of {a[1]} {a[9]:.0f} → {health:.0f}: {FELL}",
            "components": {"usage": -10.0}, "features": [],
        } if latest else None,
        "model_version": {"churn": "4", "expansion": "2"},
        "missing_features": [],
    }  # fmt: skip


@pytest.fixture(scope="module")
def report_data(tmp_path_factory: pytest.TempPathFactory) -> ReportData:
    root = tmp_path_factory.mktemp("report")  # no raw data folder: all from the store
    snaps = pd.DataFrame(
        {
            Col.ACCOUNT_ID: [a[0] for a in ACCOUNTS],
            Col.AS_OF: pd.Timestamp("2026-01-02"),
            Col.MRR: [a[4] for a in ACCOUNTS],
        }
    )
    store = ScoreStore(f"sqlite:///{root / 'scores.db'}")
    for i, (hist) in enumerate((True, False)):
        run = {
            "run_id": f"r{i}",
            "scored_at": dt.datetime(2026, 1, 2 + i, 6),
            "as_of": "2026-01-02",
            "churn_model_version": "4",
            "expansion_model_version": "2",
            "base_health": None if hist else BASE_HEALTH,
            "peers": None,
        }
        items = [
            _item(a, a[9] if hist else a[7], "yellow" if hist else a[8], latest=not hist)
            for a in ACCOUNTS
        ]
        store.write_run(run, items, [])
    reports = root / "reports"
    (reports / "plots").mkdir(parents=True)
    (reports / "metrics.json").write_text(json.dumps(METRICS))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name in ("churn_calibration.png", "churn_lift.png", "churn_shap_families.png"):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [0, 1])
        fig.savefig(reports / "plots" / name)
        plt.close(fig)
    checks = root / "checks"
    checks.mkdir()
    (checks / "summary.json").write_text(
        json.dumps(
            {
                "success": True,
                "summary": "OK: 7 tables, 4,348,886 rows, 203 checks passed",
                "failures": [],
            }
        )
    )
    return collect(store, snaps, reports, checks, root / "missing.json", 0.10)


@pytest.fixture(scope="module")
def report_html(report_data: ReportData) -> str:
    return render(report_data)


def _text(page: str) -> str:
    body = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", page, flags=re.S)
    return htmllib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)))


def test_portfolio_figures() -> None:
    class D:  # the fields portfolio() reads
        scores = pd.DataFrame(
            {
                "arr": [600_000.0, 3_600.0],
                "churn_probability": [0.02, 0.4],
                "expansion_probability": [0.3, 0.02],
            }
        )
        expansion_threshold = 0.1

    p = portfolio(D())  # type: ignore[arg-type]
    assert p["arr"] == 603_600.0
    assert p["arr_at_risk"] == pytest.approx(600_000 * 0.02 + 3_600 * 0.4)
    assert p["expected_expansion_arr"] == pytest.approx((600_000 * 0.3 + 3_600 * 0.02) * 0.1)
    assert money(1_234_567) == "$1.2M" and money(12_300) == "$12.3K" and money(999) == "$999"


def test_report_renders_in_chromium_with_every_section(report_html: str) -> None:
    assert CHROMIUM, "chromium is required (make test installs Debian's chromium)"
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "risk_report.html"
        page.write_text(report_html)
        shot = Path(tmp) / "report.png"
        flags = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={Path(tmp) / 'profile'}",
            "--window-size=1280,4000",
        ]
        subprocess.run(
            [*flags, f"--screenshot={shot}", page.as_uri()],
            check=True,
            capture_output=True,
            timeout=120,
        )
        assert shot.exists() and shot.stat().st_size > 50_000
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        dom = subprocess.run(
            [*flags, "--dump-dom", page.as_uri()],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    text = _text(dom)
    for section in (
        "Portfolio summary",
        "Risk by segment",
        "Risk by CSM",
        "Top 20 at-risk accounts",
        "Movers since the last scoring",
        "Global drivers",
        "Model trust",
        "Data-check status",
    ):
        assert section in text, section
    arr = sum(a[4] for a in ACCOUNTS) * 12
    at_risk = sum(a[4] * 12 * a[5] for a in ACCOUNTS)
    assert money(arr) in text and money(at_risk) in text  # $630.0K, $26.6K
    assert "Blue Retail" in text and "csm_7" in text and "(tech-touch)" in text
    assert "Active users of Blue Retail fell 45% in 30 days" in text
    assert "-24.0" in text  # Blue Retail moved from 45 to 21
    assert "0.766" in text and "3.24×" in text  # backtest metrics
    # The walk-forward backtest of each target: interval, size, origins, warnings, per origin.
    for target in ("Churn", "Expansion"):
        assert f"{target} model: walk-forward backtest" in text
    assert "0.766 [0.712–0.815]" in text
    assert "6 monthly origins 2025-05-01 to 2025-10-01" in text
    assert "3,000 pooled out-of-time predictions, 187 positives" in text
    assert "trained on labels up to 2025-12-30 (9,876 rows, 143 trees, platt calibration)" in text
    assert "churn: only a test warning about positives" in text
    assert "expansion: only a test warning about positives" in text
    assert "2025-08-01 1,333 500 34 0.751 0.700 0.650" in text  # one per-origin row
    assert "churn v4, expansion v2" in text
    assert "OK: 7 tables, 4,348,886 rows, 203 checks passed" in text
    # Red accounts lead the at-risk list.
    assert text.index("Blue Retail") < text.index("Cedar Health", text.index("Top 20"))


def test_report_makes_no_network_requests(report_html: str) -> None:
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"' >]+)""", report_html, flags=re.I)
    assert refs, "expected embedded images"
    assert all(r.startswith("data:") or r.startswith("#") for r in refs), refs
    # The one URL allowed: the SVG namespace of the inline health pictures (not a request).
    assert not re.search(r"https?://", report_html.replace(f'xmlns="{SVG_NS}"', ""))
    assert not re.search(r"url\(|@import|<script|<link", report_html, flags=re.I)


SECTION_IDS = ("portfolio", "by-segment", "by-csm", "top-accounts", "movers", "drivers", "trust",
               "data-checks")  # fmt: skip


def _section(page: str, anchor: str) -> str:
    """The HTML of one section of the page."""
    found = re.search(rf'<section id="{anchor}">(.*?)</section>', page, flags=re.S)
    assert found, anchor
    return found.group(1)


def test_every_section_is_there(report_html: str) -> None:
    for anchor in SECTION_IDS:
        assert report_html.count(f'<section id="{anchor}">') == 1, anchor
    assert report_html.index('id="top-accounts"') < report_html.index('id="movers"')


def test_descriptors_come_from_the_store(report_data: ReportData, report_html: str) -> None:
    """Name, segment and CSM as recorded with the run: no raw data folder exists."""
    s = report_data.scores.set_index(Col.ACCOUNT_ID)
    assert s.loc["A1", Col.NAME] == "Acme Labs" and s.loc["A1", Col.SEGMENT] == "enterprise"
    assert s.loc["A1", Col.CSM_ID] == "csm_7"
    assert s.loc["B2", Col.CSM_ID] == "(tech-touch)"  # null CSM in the store: tech-touch
    assert s.loc[HOSTILE_ID, Col.SEGMENT] == "(unknown)"  # null segment in the store
    assert report_data.base_health == BASE_HEALTH
    segments = _text(_section(report_html, "by-segment"))
    for seg in ("enterprise", "smb", "mid_market", "(unknown)"):
        assert seg in segments
    csms = _text(_section(report_html, "by-csm"))
    assert "csm_7" in csms and "(tech-touch)" in csms and "csm_<9>" in csms
    top = _text(_section(report_html, "top-accounts"))
    assert "Acme Labs" in top and "A1 · enterprise · csm_7" in top
    assert "B2 · smb · (tech-touch)" in top


def test_top_accounts_explain_and_suggest_plays(report_html: str) -> None:
    top = _section(report_html, "top-accounts")
    text = _text(top)
    assert "Active users of Cedar Health fell 45% in 30 days" in text  # a reason
    assert "Adoption workshop for Cedar Health" in text  # a play
    assert "Walk the admins through the features their peers use most." in text
    assert "Health of Cedar Health 50 → 56: active users fell from 31 to 4" in text  # changed
    assert top.count("<svg") - top.count('class="bars"') == len(ACCOUNTS)  # one picture each
    assert f"Health of Blue Retail: {BASE_HEALTH:.0f} for an average account → 21" in text


def test_movers_show_what_changed_and_plays(report_html: str) -> None:
    text = _text(_section(report_html, "movers"))
    assert "Health of Blue Retail 45 → 21: active users fell from 31 to 4" in text
    assert "Adoption workshop for Blue Retail" in text and "Executive check-in" in text
    assert "Largest declines" in text and "Largest improvements" in text


def test_hostile_names_are_escaped(report_html: str) -> None:
    assert "<script" not in report_html.lower()
    assert "&lt;script&gt;" in report_html
    assert "<b>D4" not in report_html and "csm_<9>" not in report_html
    text = _text(report_html)
    assert HOSTILE in text and "csm_<9>" in text
