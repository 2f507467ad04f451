"""The leadership risk report: one self-contained HTML page (inline CSS, charts as
inline SVG and data URIs, no external requests) built from the score store, the
backtest metrics and plots, and the data-check results.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.contract import Col, T
from features.io import load_table
from serving.store import ScoreStore

log = logging.getLogger(__name__)

TOP_ACCOUNTS = 20
TOP_MOVERS = 10
BAND_COLOURS = {"red": "#d64545", "yellow": "#e0a800", "green": "#2e9e5b"}
PLOTS = {
    "drivers_family": "churn_shap_families.png",
    "drivers_feature": "churn_shap_bar.png",
    "calibration": "churn_calibration.png",
    "lift": "churn_lift.png",
}


class ReportError(ValueError):
    """Something the report needs is missing; the message says which stage to run."""


@dataclass
class ReportData:
    """Everything the page shows, gathered from files and the store."""

    run: dict[str, Any]
    previous_run: dict[str, Any] | None
    scores: pd.DataFrame  # one row per account of the newest run, with ARR and firmographics
    metrics: dict[str, Any]
    plots: dict[str, Path]
    checks: dict[str, Any] | None
    snapshot_checks: dict[str, Any] | None
    expansion_threshold: float
    trained_at: str | None = None
    generated_at: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    )


# ----- gathering -----------------------------------------------------------------
def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def collect(
    store: ScoreStore,
    snapshots: pd.DataFrame,
    raw_dir: Path,
    reports_dir: Path,
    checks_dir: Path,
    snapshot_report: Path,
    expansion_threshold: float,
) -> ReportData:
    """Read the newest scoring run and everything around it."""
    runs = store.recent_runs(2)
    if not runs:
        raise ReportError(f"no scoring run in {store!r}: run `cshealth score` first")
    run = runs[0]
    scores = pd.DataFrame(store.run_scores(run["run_id"]))
    newest = snapshots[snapshots[Col.AS_OF] == snapshots[Col.AS_OF].max()]
    mrr = newest.set_index(Col.ACCOUNT_ID)[Col.MRR]
    scores["arr"] = scores[Col.ACCOUNT_ID].map(mrr).fillna(0.0).astype(float) * 12
    accounts = load_table(raw_dir, T.ACCOUNTS)
    if accounts is not None:
        info = accounts.frame.set_index(Col.ACCOUNT_ID)
        for col in (Col.NAME, Col.SEGMENT, Col.CSM_ID):
            scores[col] = scores[Col.ACCOUNT_ID].map(info[col])
    for col in (Col.NAME, Col.SEGMENT, Col.CSM_ID):
        if col not in scores:
            scores[col] = None
    scores[Col.NAME] = scores[Col.NAME].fillna(scores[Col.ACCOUNT_ID])
    scores[Col.CSM_ID] = scores[Col.CSM_ID].fillna("(tech-touch)")
    scores[Col.SEGMENT] = scores[Col.SEGMENT].fillna("(unknown)")
    metrics_path = reports_dir / "metrics.json"
    metrics = _json(metrics_path)
    if metrics is None:
        raise ReportError(f"{metrics_path} not found: run `cshealth train` first")
    trained = dt.datetime.fromtimestamp(metrics_path.stat().st_mtime, dt.UTC)
    plots = {
        k: reports_dir / "plots" / v
        for k, v in PLOTS.items()
        if (reports_dir / "plots" / v).exists()
    }
    return ReportData(
        run=run,
        previous_run=runs[1] if len(runs) > 1 else None,
        scores=scores,
        metrics=metrics,
        plots=plots,
        checks=_json(checks_dir / "summary.json"),
        snapshot_checks=_json(snapshot_report),
        expansion_threshold=expansion_threshold,
        trained_at=trained.strftime("%Y-%m-%d %H:%M UTC"),
    )


# ----- figures ---------------------------------------------------------------------
def portfolio(data: ReportData) -> dict[str, float]:
    """ARR, ARR at risk (Σ p_churn × ARR), expected expansion ARR, forecast NRR."""
    s = data.scores
    arr = float(s["arr"].sum())
    at_risk = float((s["churn_probability"] * s["arr"]).sum())
    # Each expansion adds at least `threshold` of ARR: a conservative expected value.
    expansion = float((s["expansion_probability"] * s["arr"]).sum() * data.expansion_threshold)
    return {
        "accounts": len(s),
        "arr": arr,
        "arr_at_risk": at_risk,
        "expected_expansion_arr": expansion,
        "forecast_nrr": (arr - at_risk + expansion) / arr if arr > 0 else float("nan"),
    }


def risk_by(data: ReportData, column: str) -> pd.DataFrame:
    """Accounts, ARR, ARR at risk and band counts per group, most ARR at risk first."""
    s = data.scores.assign(risk=data.scores["churn_probability"] * data.scores["arr"])
    g = s.groupby(column, dropna=False)
    out = pd.DataFrame(
        {
            "accounts": g.size(),
            "arr": g["arr"].sum(),
            "arr_at_risk": g["risk"].sum(),
            "mean_health": g["health_score"].mean(),
            "red": g["band"].apply(lambda b: int((b == "red").sum())),
        }
    )
    out["risk_share"] = out["arr_at_risk"] / out["arr"].where(out["arr"] > 0)
    return out.sort_values("arr_at_risk", ascending=False)


# ----- formatting -------------------------------------------------------------------
def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(x)


def money(x: float) -> str:
    """$1.2M, $345K, $900 ("–" for a missing or non-finite amount)."""
    if not _finite(x):
        return "–"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= size:
            return f"${x / size:,.1f}{unit}"
    return f"${x:,.0f}"


def pct(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}%}" if _finite(x) else "–"


def _e(x: Any) -> str:
    return html.escape(str(x))


def _img(path: Path | None, alt: str) -> str:
    if path is None or not path.exists():
        return f'<p class="muted">({_e(alt)}: plot not available — run <code>cshealth train</code>)</p>'
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _bars(labels: list[str], values: list[float], fmt: Any = money, colour: str = "#d64545") -> str:
    """A horizontal bar chart as inline SVG."""
    if not values:
        return ""
    # A non-finite value gets no bar: one inf would make every width NaN or zero.
    top = max([v for v in values if _finite(v)] + [1e-9])
    row, width, label_w = 22, 640, 170
    parts = [f'<svg class="bars" viewBox="0 0 {width} {row * len(values) + 4}" role="img">']
    for i, (lab, v) in enumerate(zip(labels, values, strict=True)):
        w = (width - label_w - 90) * max(v, 0) / top if _finite(v) else 0.0
        y = i * row + 2
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{_e(lab)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" fill="{colour}"/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 15}">{_e(fmt(v))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _band(b: str) -> str:
    return f'<span class="band" style="background:{BAND_COLOURS.get(b, "#888")}">{_e(b)}</span>'


def _change(x: Any) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return '<span class="muted">new</span>'
    cls = "down" if x < 0 else "up" if x > 0 else "muted"
    return f'<span class="{cls}">{x:+.1f}</span>'


def _reasons(reasons: Any) -> str:
    items = "".join(f"<li>{_e(r['sentence'])}</li>" for r in (reasons or [])[:3])
    return f"<ul class='reasons'>{items}</ul>" if items else ""


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


# ----- sections -------------------------------------------------------------------------
def _summary(data: ReportData) -> str:
    p = portfolio(data)
    bands = data.scores.groupby("band")["arr"].agg(["size", "sum"])
    cards = [
        ("Accounts", f"{p['accounts']:,}"),
        ("ARR", money(p["arr"])),
        (
            "ARR at risk (90 days)",
            f"{money(p['arr_at_risk'])} <small>({pct(p['arr_at_risk'] / p['arr'] if p['arr'] else float('nan'))})</small>",
        ),
        ("Expected expansion ARR", money(p["expected_expansion_arr"])),
        ("Forecast net revenue retention", pct(p["forecast_nrr"])),
    ]
    html_cards = "".join(
        f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div></div>'
        for k, v in cards
    )
    band_rows = [
        [_band(b), f"{int(bands.loc[b, 'size']):,}", money(float(bands.loc[b, "sum"]))]
        for b in ("red", "yellow", "green")
        if b in bands.index
    ]
    return (
        '<section id="portfolio"><h2>Portfolio summary</h2>'
        f'<div class="cards">{html_cards}</div>'
        + _table(["Band", "Accounts", "ARR"], band_rows, "narrow")
        + '<p class="muted">ARR at risk = Σ churn probability × ARR over the next 90 days. '
        f"Expected expansion ARR = Σ expansion probability × ARR × {data.expansion_threshold:.0%} "
        "(the minimum uplift that counts as expansion). Forecast NRR = (ARR − ARR at risk + "
        "expected expansion) / ARR.</p></section>"
    )


def _breakdown(
    data: ReportData, column: str, label: str, title: str, anchor: str, limit: int = 15
) -> str:
    t = risk_by(data, column).head(limit)
    rows = [
        [_e(idx), f"{int(r.accounts):,}", money(r.arr), money(r.arr_at_risk), pct(r.risk_share),
         f"{r.mean_health:.0f}", f"{int(r.red):,}"]
        for idx, r in t.iterrows()
    ]  # fmt: skip
    chart = _bars([str(i) for i in t.index], t["arr_at_risk"].tolist())
    return (
        f'<section id="{anchor}"><h2>{title}</h2>{chart}'
        + _table(
            [
                label,
                "Accounts",
                "ARR",
                "ARR at risk",
                "Risk share",
                "Mean health",
                "Red",
            ],
            rows,
        )
        + "</section>"
    )


def _top_accounts(data: ReportData) -> str:
    s = data.scores.assign(risk=data.scores["churn_probability"] * data.scores["arr"])
    # Red before yellow before green, then by money at stake.
    severity = s["band"].map({"red": 0, "yellow": 1, "green": 2}).fillna(3)
    top = s.assign(_sev=severity).sort_values(["_sev", "risk"], ascending=[True, False])
    top = top.head(TOP_ACCOUNTS)
    rows = [
        [f"<b>{_e(r[Col.NAME])}</b><br><small>{_e(r[Col.ACCOUNT_ID])} · {_e(r[Col.SEGMENT])} · "
         f"{_e(r[Col.CSM_ID])}</small>", money(r.arr), pct(r.churn_probability), money(r.risk),
         f"{r.health_score:.0f}", _band(r.band), _change(r.health_change), _reasons(r.reasons)]
        for _, r in top.iterrows()
    ]  # fmt: skip
    return (
        f'<section id="top-accounts"><h2>Top {TOP_ACCOUNTS} at-risk accounts</h2>'
        '<p class="muted">Red accounts first, then yellow; within a band by ARR at risk '
        "(churn probability × ARR).</p>"
        + _table(
            [
                "Account",
                "ARR",
                "Churn risk",
                "ARR at risk",
                "Health",
                "Band",
                "Change",
                "Top reasons",
            ],
            rows,
            "accounts",
        )
        + "</section>"
    )


def _movers(data: ReportData) -> str:
    head = '<section id="movers"><h2>Movers since the last scoring</h2>'
    if data.previous_run is None:
        return head + '<p class="muted">This is the first scoring run: no movers yet.</p></section>'
    s = data.scores.dropna(subset=["health_change"])
    since = (
        f"<p class='muted'>Compared with the run of {_e(data.previous_run['scored_at'][:16])}.</p>"
    )
    blocks = []
    for title, part in (("Largest declines", s.nsmallest(TOP_MOVERS, "health_change")),
                        ("Largest improvements", s.nlargest(TOP_MOVERS, "health_change"))):  # fmt: skip
        part = (
            part[part["health_change"] < 0]
            if "declines" in title
            else part[part["health_change"] > 0]
        )
        rows = [[_e(r[Col.NAME]), money(r.arr), f"{r.health_score:.0f}", _change(r.health_change),
                 _reasons(r.reasons)] for _, r in part.iterrows()]  # fmt: skip
        body = (
            _table(["Account", "ARR", "Health", "Change", "Top reasons"], rows)
            if rows
            else ('<p class="muted">None.</p>')
        )
        blocks.append(f"<h3>{title}</h3>{body}")
    return head + since + "".join(blocks) + "</section>"


def _drivers(data: ReportData) -> str:
    comp = pd.DataFrame(list(data.scores["components"])).fillna(0.0)
    mean = comp.mean().sort_values()
    rows = [[_e(f), f"{v:+.1f}", f"{comp[f].abs().mean():.1f}"] for f, v in mean.items()]
    return (
        '<section id="drivers"><h2>Global drivers</h2>'
        "<p>Health points each feature family adds (+) or takes away (−) across the portfolio, "
        "relative to an average account.</p>"
        + _table(["Family", "Mean component", "Mean |component|"], rows, "narrow")
        + '<div class="plots">'
        + _img(data.plots.get("drivers_family"), "SHAP importance by feature family")
        + _img(data.plots.get("drivers_feature"), "SHAP importance by feature")
        + "</div></section>"
    )


_CONTENDER_NAMES = {"lightgbm": "LightGBM", "logistic": "Logistic regression",
                    "rules": "Hand-weighted rule score", "oracle": "Oracle (true probabilities)"}  # fmt: skip


def _f(v: Any, fmt: str) -> str:
    """A metric for display ("–" when missing)."""
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _target_trust(target: str, m: dict[str, Any]) -> str:
    """One target's backtest: pooled metrics with intervals, warnings, the per-origin table."""
    contenders = m.get("contenders", {})
    rows = [
        [_CONTENDER_NAMES.get(k, k),
         f"{_f(v.get('roc_auc'), '.3f')} <small>[{_f(v.get('roc_auc_lo'), '.3f')}–"
         f"{_f(v.get('roc_auc_hi'), '.3f')}]</small>",
         _f(v.get("pr_auc"), ".3f"), _f(v.get("brier"), ".4f"), _f(v.get("ece"), ".3f"),
         _f(v.get("top_decile_lift"), ".2f") + "×", pct(v.get("top_decile_recall") or float("nan")),
         pct(v.get("top_decile_arr_share") or float("nan"))]
        for k, v in contenders.items()
    ]  # fmt: skip
    names = [k for k in contenders if k != "oracle"]
    origin_rows = [
        [_e(day), f"{o.get('train_rows', 0):,}", f"{o.get('rows', 0):,}", f"{o.get('positives', 0):,}",
         *[_f(o.get(f"{k}_roc_auc"), ".3f") for k in names]]
        for day, o in m.get("per_origin", {}).items()
    ]  # fmt: skip
    warnings = "".join(f"<li>{_e(w)}</li>" for w in m.get("warnings", []))
    return (
        f"<h3>{_e(target.title())} model: walk-forward backtest</h3>"
        f"<p>{m.get('origins', 0)} monthly origins {_e(m.get('first_origin') or '–')} to "
        f"{_e(m.get('last_origin') or '–')}: at each, every model is trained only on outcomes "
        f"known before it and scores the accounts of that day; {m.get('rows', 0):,} pooled "
        f"out-of-time predictions, {m.get('positives', 0):,} positives. 95 % intervals resample "
        f"accounts. The model in use is trained on labels up to "
        f"<b>{_e(m.get('trained_on_labels_up_to') or '–')}</b> "
        f"({m.get('champion_rows', 0):,} rows, {m.get('trees', '–')} trees, "
        f"{_e(m.get('calibration') or '–')} calibration).</p>"
        + (f'<ul class="warnings">{warnings}</ul>' if warnings else "")
        + _table(["Model", "ROC AUC [95 %]", "PR AUC", "Brier", "ECE", "Top-decile lift",
                  "Top-decile recall", "Top-decile ARR share"], rows)
        + "<details><summary>Per origin</summary>"
        + _table(["Origin", "Training rows", "Scored", "Positives",
                  *[f"{_CONTENDER_NAMES.get(k, k)} AUC" for k in names]], origin_rows, "narrow")
        + "</details>"
    )  # fmt: skip


def _trust(data: ReportData) -> str:
    blocks = [_target_trust(t, m) for t, m in data.metrics.items() if isinstance(m, dict)]
    mv = data.scores["model_version"].iloc[0] if len(data.scores) else {}
    versions = ", ".join(f"{k} v{v}" for k, v in mv.items()) or "unknown"
    return (
        '<section id="trust"><h2>Model trust</h2>'
        f"<p>Models in use: {_e(versions)}; trained {_e(data.trained_at)}. Quality is measured "
        "by a walk-forward backtest, never on random rows or on data the model was fitted "
        "on.</p>"
        + "".join(blocks)
        + '<div class="plots">'
        + _img(data.plots.get("calibration"), "Calibration of churn probabilities")
        + _img(data.plots.get("lift"), "Churn lift by risk decile")
        + "</div></section>"
    )


def _checks(data: ReportData) -> str:
    def line(name: str, c: dict[str, Any] | None) -> list[str]:
        if c is None:
            return [name, '<span class="muted">not run</span>', ""]
        ok = c.get("success")
        status = '<span class="up">passed</span>' if ok else '<span class="down">FAILED</span>'
        fails = "; ".join(f"{f['table']}.{f.get('column') or ''}: {f['check']} ({f['failing_rows']:,} rows)"
                          for f in c.get("failures", [])[:5])  # fmt: skip
        return [
            name,
            status,
            _e(c.get("summary", "")) + (f"<br><small>{_e(fails)}</small>" if fails else ""),
        ]

    rows = [line("Raw data (contract checks)", data.checks),
            line("Snapshot table (feature checks)", data.snapshot_checks)]  # fmt: skip
    return (
        '<section id="data-checks"><h2>Data-check status</h2>'
        + _table(["Input", "Status", "Summary"], rows)
        + "</section>"
    )


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:22px 40px}header h1{margin:0;font-size:26px}
header p{margin:6px 0 0;color:#c7ccd6}main{padding:10px 40px 40px;max-width:1200px}
section{background:#fff;border-radius:8px;padding:18px 24px;margin:18px 0;box-shadow:0 1px 2px #0001}
h2{margin:0 0 12px;font-size:20px}h3{font-size:16px;margin:18px 0 8px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:14px}
.card{flex:1 1 180px;border:1px solid #e3e6eb;border-radius:8px;padding:12px 14px}
.card .k{font-size:12px;text-transform:uppercase;color:#687083;letter-spacing:.04em}
.card .v{font-size:24px;font-weight:600;margin-top:4px}
table{border-collapse:collapse;width:100%;font-size:13px;margin:8px 0}
th,td{border-bottom:1px solid #eceef2;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}table.narrow{width:auto}
.band{color:#fff;border-radius:10px;padding:1px 8px;font-size:12px}
.up{color:#2e9e5b;font-weight:600}.down{color:#d64545;font-weight:600}.muted{color:#7a8293}
ul.reasons{margin:0;padding-left:16px}small{color:#687083}
.plots{display:flex;flex-wrap:wrap;gap:16px}.plots img{max-width:540px;width:100%}
svg.bars{width:100%;max-width:720px;font-size:12px}
"""


def render(data: ReportData) -> str:
    """The whole page."""
    run = data.run
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>Customer health risk report — {_e(run['as_of'])}</title><style>{CSS}</style></head><body>"
        f"<header><h1>Customer health risk report</h1><p>Scores as of {_e(run['as_of'])} · "
        f"scored {_e(str(run['scored_at'])[:16])} · generated {_e(data.generated_at)}</p></header><main>"
        + _summary(data)
        + _breakdown(data, Col.SEGMENT, "Segment", "Risk by segment", "by-segment")
        + _breakdown(data, Col.CSM_ID, "CSM", "Risk by CSM", "by-csm")
        + _top_accounts(data)
        + _movers(data)
        + _drivers(data)
        + _trust(data)
        + _checks(data)
        + "</main></body></html>"
    )
