"""The leadership risk report: one self-contained HTML page (inline CSS, charts as
inline SVG and data URIs, no external requests) built from the score store, the
backtest metrics and plots, and the data-check results.

Everything about an account (name, segment, CSM, reasons, plays, what changed) comes
from the score store, as recorded with the scoring run; ARR comes from the snapshot
table. The page is rendered from the Jinja2 templates in `cshealth/templates`
(autoescaped: names and sentences are shown as text, never as markup).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from markupsafe import Markup

from features.contract import Col
from serving.drift import drift_context
from serving.store import SCORE_FIELDS, ScoreStore
from serving.waterfall import BAND_COLOURS, DEFAULT_BASE_HEALTH, default_title, waterfall_svg

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
TOP_ACCOUNTS = 20
TOP_WATERFALLS = 10  # the first accounts of the top list get the health picture
TOP_MOVERS = 10
TOP_REASONS = 3
TOP_PLAYS = 3
NO_CSM = "(tech-touch)"
NO_SEGMENT = "(unknown)"
PLOTS = {
    "drivers_family": "churn_shap_families.png",
    "drivers_feature": "churn_shap_bar.png",
    "calibration": "churn_calibration.png",
    "lift": "churn_lift.png",
}
_CONTENDER_NAMES = {"lightgbm": "LightGBM", "logistic": "Logistic regression",
                    "rules": "Hand-weighted rule score", "oracle": "Oracle (true probabilities)"}  # fmt: skip


class ReportError(ValueError):
    """Something the report needs is missing; the message says which stage to run."""


@dataclass
class ReportData:
    """Everything the page shows, gathered from files and the store."""

    run: dict[str, Any]
    previous_run: dict[str, Any] | None
    scores: pd.DataFrame  # one row per account of the newest run, with ARR and descriptors
    metrics: dict[str, Any]
    plots: dict[str, Path]
    checks: dict[str, Any] | None
    snapshot_checks: dict[str, Any] | None
    expansion_threshold: float
    trained_at: str | None = None
    base_health: float = DEFAULT_BASE_HEALTH  # health of an average account (the run's)
    monitor: dict[str, Any] | None = None  # `cshealth monitor`'s JSON for this run
    generated_at: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    )


# ----- gathering -----------------------------------------------------------------
def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _arr(scores: pd.DataFrame, snapshots: pd.DataFrame) -> pd.Series:
    """ARR per scored account: 12 × the MRR of the snapshot table's newest rows (0 if absent)."""
    newest = snapshots[snapshots[Col.AS_OF] == snapshots[Col.AS_OF].max()]
    mrr = newest.set_index(Col.ACCOUNT_ID)[Col.MRR]
    return scores[Col.ACCOUNT_ID].map(mrr).fillna(0.0).astype(float) * 12


def _descriptors(scores: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """Name, segment and CSM as the store recorded them; null means no CSM / no segment."""
    for col in (Col.NAME, Col.SEGMENT, Col.CSM_ID):
        if col not in scores:
            scores[col] = None
    if len(scores) and scores[Col.NAME].isna().all() and scores[Col.SEGMENT].isna().all():
        log.warning(
            "run %s holds no account names or segments (scored before they were recorded?): "
            "score again to show them", run_id,
        )  # fmt: skip
    scores[Col.NAME] = scores[Col.NAME].astype(object).fillna(scores[Col.ACCOUNT_ID])
    scores[Col.CSM_ID] = scores[Col.CSM_ID].astype(object).fillna(NO_CSM)
    scores[Col.SEGMENT] = scores[Col.SEGMENT].astype(object).fillna(NO_SEGMENT)
    return scores


def _base_health(run: dict[str, Any]) -> float:
    value = run.get("base_health")
    return float(value) if _finite(value) else DEFAULT_BASE_HEALTH


def collect(
    store: ScoreStore,
    snapshots: pd.DataFrame,
    reports_dir: Path,
    checks_dir: Path,
    snapshot_report: Path,
    expansion_threshold: float,
    monitor_file: Path | None = None,
) -> ReportData:
    """Read the newest scoring run and everything around it.

    `monitor_file` (`cshealth monitor`'s JSON) is shown when it describes this run.
    """
    runs = store.recent_runs(2)
    if not runs:
        raise ReportError(f"no scoring run in {store!r}: run `cshealth score` first")
    run = runs[0]
    scores = pd.DataFrame(store.run_scores(run["run_id"]), columns=list(SCORE_FIELDS))
    scores["arr"] = _arr(scores, snapshots)
    scores = _descriptors(scores, run["run_id"])
    metrics_path = Path(reports_dir) / "metrics.json"
    metrics = _json(metrics_path)
    if metrics is None:
        raise ReportError(f"{metrics_path} not found: run `cshealth train` first")
    trained = dt.datetime.fromtimestamp(metrics_path.stat().st_mtime, dt.UTC)
    plots_dir = Path(reports_dir) / "plots"
    plots = {k: plots_dir / v for k, v in PLOTS.items() if (plots_dir / v).exists()}
    return ReportData(
        run=run,
        previous_run=runs[1] if len(runs) > 1 else None,
        scores=scores,
        metrics=metrics,
        plots=plots,
        checks=_json(Path(checks_dir) / "summary.json"),
        snapshot_checks=_json(Path(snapshot_report)),
        expansion_threshold=expansion_threshold,
        trained_at=trained.strftime("%Y-%m-%d %H:%M UTC"),
        base_health=_base_health(run),
        monitor=_monitor_of(monitor_file, run["run_id"]),
    )


def _monitor_of(path: Path | None, run_id: str) -> dict[str, Any] | None:
    """The monitor's results when they are about `run_id` (an older file is not shown)."""
    found = _json(Path(path)) if path is not None else None
    if found is None or (found.get("current") or {}).get("run_id") != run_id:
        return None
    return found


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


# ----- formatting (also the templates' filters) --------------------------------------
def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(x)
    except TypeError:
        return False


def money(x: float) -> str:
    """$1.2M, $345K, $900 ("–" for a missing or non-finite amount)."""
    if not _finite(x):
        return "–"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= size:
            return f"${x / size:,.1f}{unit}"
    return f"${x:,.0f}"


def pct(x: float | None, digits: int = 1) -> str:
    return f"{x:.{digits}%}" if _finite(x) else "–"


def metric(v: Any, fmt: str) -> str:
    """A number for display ("–" when missing or not finite)."""
    return format(v, fmt) if _finite(v) else "–"


def _band_colour(band: Any) -> str:
    return BAND_COLOURS.get(str(band), "#888")


@cache
def environment() -> jinja2.Environment:
    """The report's templates, autoescaped, strict about undefined names."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(money=money, pct=pct, metric=metric, band_colour=_band_colour)
    return env


# ----- what the sections show ---------------------------------------------------------
def _image(path: Path | None) -> str | None:
    """A PNG as a data URI (None when there is no plot)."""
    if path is None or not path.exists():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _chart(labels: list[str], values: list[float]) -> dict[str, Any] | None:
    """The geometry of a horizontal bar chart of amounts (drawn by the `bars` macro)."""
    if not values:
        return None
    # A non-finite value gets no bar: one inf would make every width NaN or zero.
    top = max([v for v in values if _finite(v)] + [1e-9])
    row, width, label_w = 22, 640, 170
    bars = [
        {"label": lab, "y": i * row + 2, "text": money(v),
         "w": (width - label_w - 90) * max(v, 0) / top if _finite(v) else 0.0}
        for i, (lab, v) in enumerate(zip(labels, values, strict=True))
    ]  # fmt: skip
    return {"width": width, "height": row * len(values) + 4, "row": row, "label_w": label_w,
            "bars": bars}  # fmt: skip


def _bars(labels: list[str], values: list[float]) -> str:
    """A horizontal bar chart of amounts as inline SVG (the `bars` macro on `_chart`)."""
    macros = environment().get_template("macros.html.j2").module
    return str(macros.bars(_chart(labels, values)))  # type: ignore[attr-defined]


def _bands(data: ReportData) -> list[dict[str, Any]]:
    bands = data.scores.groupby("band")["arr"].agg(["size", "sum"])
    return [
        {"band": b, "accounts": int(bands.loc[b, "size"]), "arr": float(bands.loc[b, "sum"])}
        for b in ("red", "yellow", "green")
        if b in bands.index
    ]


def _portfolio(data: ReportData) -> dict[str, Any]:
    p = portfolio(data)
    share = p["arr_at_risk"] / p["arr"] if p["arr"] else float("nan")
    return {**p, "risk_share": share}


def _breakdown(
    data: ReportData, column: str, label: str, title: str, anchor: str, limit: int = 15
) -> dict[str, Any]:
    t = risk_by(data, column).head(limit)
    rows = [
        {"group": str(idx), "accounts": int(r.accounts), "arr": r.arr, "red": int(r.red),
         "arr_at_risk": r.arr_at_risk, "risk_share": r.risk_share, "mean_health": r.mean_health}
        for idx, r in t.iterrows()
    ]  # fmt: skip
    chart = _chart([str(i) for i in t.index], t["arr_at_risk"].tolist())
    return {"anchor": anchor, "title": title, "label": label, "rows": rows, "chart": chart}


def _list(x: Any) -> list[dict[str, Any]]:
    """A stored JSON list of objects (null or anything else: empty)."""
    return [v for v in x if isinstance(v, dict)] if isinstance(x, list) else []


def _opt(x: Any) -> Any:
    """None for a missing value (None, NaN), else the value."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _changed(changes: Any) -> str | None:
    """The what-changed sentence of a score (None: first scoring or nothing recorded)."""
    return (changes.get("sentence") or None) if isinstance(changes, dict) else None


def _waterfall(item: dict[str, Any], base_health: float) -> Markup:
    """The account's health picture, inline (the SVG is escaped by `waterfall_svg`)."""
    title = default_title({**item, "account_id": item[Col.NAME]}, base_health)
    return Markup(waterfall_svg(item, base_health, title=title))


def _account(item: dict[str, Any], base_health: float | None = None) -> dict[str, Any]:
    """What a row of the top-accounts or movers tables shows about one account."""
    return {
        "name": item[Col.NAME], "account_id": item[Col.ACCOUNT_ID],
        "segment": item[Col.SEGMENT], "csm": item[Col.CSM_ID],
        "arr": item["arr"], "churn": item["churn_probability"],
        "risk": item["churn_probability"] * item["arr"],
        "health": item["health_score"], "band": item["band"],
        "change": _opt(item.get("health_change")),
        "reasons": [r.get("sentence") for r in _list(item.get("reasons"))[:TOP_REASONS]],
        "plays": _list(item.get("plays"))[:TOP_PLAYS],
        "changed": _changed(item.get("changes")),
        "waterfall": None if base_health is None else _waterfall(item, base_health),
    }  # fmt: skip


def _top_accounts(data: ReportData) -> list[dict[str, Any]]:
    """Red before yellow before green, then by money at stake."""
    s = data.scores.assign(risk=data.scores["churn_probability"] * data.scores["arr"])
    severity = s["band"].map({"red": 0, "yellow": 1, "green": 2}).fillna(3)
    top = s.assign(_sev=severity).sort_values(["_sev", "risk"], ascending=[True, False])
    items = top.head(TOP_ACCOUNTS).to_dict("records")
    return [
        _account(item, data.base_health if i < TOP_WATERFALLS else None)
        for i, item in enumerate(items)
    ]


def _movers(data: ReportData) -> dict[str, Any] | None:
    """Largest declines and improvements since the previous run (None: first run)."""
    if data.previous_run is None:
        return None
    s = data.scores[data.scores["health_change"].notna()]
    declines = s.nsmallest(TOP_MOVERS, "health_change")
    gains = s.nlargest(TOP_MOVERS, "health_change")
    blocks = [
        ("Largest declines", declines[declines["health_change"] < 0]),
        ("Largest improvements", gains[gains["health_change"] > 0]),
    ]
    return {
        "since": str(data.previous_run["scored_at"])[:16].replace("T", " "),
        "blocks": [
            {"title": title, "accounts": [_account(i) for i in part.to_dict("records")]}
            for title, part in blocks
        ],
    }


def _drivers(data: ReportData) -> dict[str, Any]:
    comp = pd.DataFrame([c if isinstance(c, dict) else {} for c in data.scores["components"]])
    comp = comp.apply(pd.to_numeric, errors="coerce").fillna(0.0)
    mean = comp.mean().sort_values()
    return {
        "rows": [
            {"family": f, "mean": v, "mean_abs": comp[f].abs().mean()} for f, v in mean.items()
        ]
    }


def _contender(key: str, v: dict[str, Any]) -> dict[str, str]:
    return {
        "name": _CONTENDER_NAMES.get(key, key), "auc": metric(v.get("roc_auc"), ".3f"),
        "lo": metric(v.get("roc_auc_lo"), ".3f"), "hi": metric(v.get("roc_auc_hi"), ".3f"),
        "pr_auc": metric(v.get("pr_auc"), ".3f"), "brier": metric(v.get("brier"), ".4f"),
        "ece": metric(v.get("ece"), ".3f"), "lift": metric(v.get("top_decile_lift"), ".2f"),
        "recall": pct(v.get("top_decile_recall")), "arr_share": pct(v.get("top_decile_arr_share")),
    }  # fmt: skip


def _target_trust(target: str, m: dict[str, Any]) -> dict[str, Any]:
    """One target's backtest: pooled metrics with intervals, warnings, the per-origin table."""
    contenders = m.get("contenders", {})
    names = [k for k in contenders if k != "oracle"]
    per_origin = [
        {"day": day, "train_rows": o.get("train_rows", 0), "rows": o.get("rows", 0),
         "positives": o.get("positives", 0),
         "aucs": [metric(o.get(f"{k}_roc_auc"), ".3f") for k in names]}
        for day, o in m.get("per_origin", {}).items()
    ]  # fmt: skip
    return {
        "title": target.title(), "origins": m.get("origins", 0),
        "first_origin": m.get("first_origin") or "–", "last_origin": m.get("last_origin") or "–",
        "rows": m.get("rows", 0), "positives": m.get("positives", 0),
        "trained_on": m.get("trained_on_labels_up_to") or "–",
        "champion_rows": m.get("champion_rows", 0), "trees": m.get("trees", "–"),
        "calibration": m.get("calibration") or "–", "warnings": m.get("warnings", []),
        "contenders": [_contender(k, v) for k, v in contenders.items()],
        "names": [_CONTENDER_NAMES.get(k, k) for k in names], "per_origin": per_origin,
    }  # fmt: skip


def _trust(data: ReportData) -> dict[str, Any]:
    mv = data.scores["model_version"].iloc[0] if len(data.scores) else {}
    versions = ", ".join(f"{k} v{v}" for k, v in (mv or {}).items()) or "unknown"
    return {
        "versions": versions,
        "trained_at": data.trained_at,
        "targets": [_target_trust(t, m) for t, m in data.metrics.items() if isinstance(m, dict)],
    }


def _check(name: str, c: dict[str, Any] | None) -> dict[str, Any]:
    if c is None:
        return {"name": name, "success": None, "summary": "", "failures": ""}
    fails = "; ".join(
        f"{f['table']}.{f.get('column') or ''}: {f['check']} ({f['failing_rows']:,} rows)"
        for f in c.get("failures", [])[:5]
    )
    return {"name": name, "success": bool(c.get("success")), "summary": c.get("summary", ""),
            "failures": fails}  # fmt: skip


def context(data: ReportData) -> dict[str, Any]:
    """Everything the templates read."""
    return {
        "run": data.run,
        "generated_at": data.generated_at,
        "p": _portfolio(data),
        "bands": _bands(data),
        "expansion_threshold": data.expansion_threshold,
        "breakdowns": [
            _breakdown(data, Col.SEGMENT, "Segment", "Risk by segment", "by-segment"),
            _breakdown(data, Col.CSM_ID, "CSM", "Risk by CSM", "by-csm"),
        ],
        "top_n": TOP_ACCOUNTS,
        "base_health": data.base_health,
        "accounts": _top_accounts(data),
        "movers": _movers(data),
        "drivers": _drivers(data),
        "plots": {k: _image(data.plots.get(k)) for k in PLOTS},
        "trust": _trust(data),
        "drift": drift_context(data.monitor) if data.monitor is not None else None,
        "realised": (data.monitor or {}).get("realised"),
        "checks": [
            _check("Raw data (contract checks)", data.checks),
            _check("Snapshot table (feature checks)", data.snapshot_checks),
        ],
    }


def render(data: ReportData) -> str:
    """The whole page."""
    return environment().get_template("report.html.j2").render(context(data))
