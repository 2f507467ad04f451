"""Evaluation and SHAP plots of a training run, written as PNG files (one set per target).

Per target (e.g. `churn_roc.png`), on the pooled out-of-time predictions of the
walk-forward backtest (every contender on the same rows):

* `roc` and `pr`: ROC and precision-recall curves of LightGBM, the baselines and,
  when a truth file was given, the oracle (the simulator's true probabilities);
* `calibration`: mean predicted vs observed rate in 10 equal-frequency bins;
* `lift`: positive rate per risk decile divided by the base rate;
* `shap_bar` and `shap_beeswarm`: `shap.summary_plot` on at most `SHAP_SAMPLE` rows;
* `shap_families`: mean |SHAP| summed per feature family.

`write_plot_data` writes the numbers behind the curves beside them as CSV (e.g.
`churn_roc.csv`), declared as DVC plots in `dvc.yaml` so that `dvc plots diff` overlays
runs and experiments: `roc` (each contender's true positive rate at 101 evenly spaced
false positive rates), `calibration` (LightGBM's 10 bins), `lift` (per decile and
contender) and `backtest_auc` (each contender's ROC AUC per backtest origin).

matplotlib (Agg) and shap are imported inside `write_plots` only: importing this
module costs nothing and has no side effects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.contract import Col
from features.meta import Family
from training.metrics import equal_frequency_bins, expected_calibration_error
from training.model import BIAS, HealthModel

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from features.snapshots import SnapshotTable
    from training.train import TargetResult, TrainResult

#: file name suffixes written per target, in order: f"{target}_{name}.png"
PLOT_NAMES = ("roc", "pr", "calibration", "lift", "shap_bar", "shap_beeswarm", "shap_families")
#: at most this many test rows go into the SHAP summary plots
SHAP_SAMPLE = 2000
#: fixed seed for the SHAP row sample and the beeswarm jitter (plots are reproducible)
SEED = 0
BINS = 10
CONTENDERS = ("lightgbm", "logistic", "rules", "oracle")
_STYLE = {
    "lightgbm": {"color": "#1f77b4", "lw": 2.2},
    "logistic": {"color": "#ff7f0e", "lw": 1.6},
    "rules": {"color": "#2ca02c", "lw": 1.6},
    "oracle": {"color": "#7f7f7f", "lw": 1.4, "ls": "--"},
}
_LABEL = {"lightgbm": "LightGBM", "logistic": "Logistic regression", "rules": "Rule score",
          "oracle": "Oracle (true probability)"}  # fmt: skip
DPI = 110
#: data files written per target by `write_plot_data`, in order: f"{target}_{name}.csv"
DATA_NAMES = ("roc", "calibration", "lift", "backtest_auc")
#: false positive rates (evenly spaced over [0, 1]) at which `roc.csv` gives each ROC
ROC_POINTS = 101


def plot_paths(out_dir: Path, targets: list[str]) -> list[Path]:
    """The files `write_plots` writes for `targets`, in its order."""
    return [Path(out_dir) / f"{t}_{name}.png" for t in targets for name in PLOT_NAMES]


def write_plots(result: TrainResult, snaps: SnapshotTable, out_dir: Path) -> list[Path]:
    """Write every plot of every target into `out_dir` (each file atomically); return paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with plt.rc_context({"axes.grid": True, "grid.alpha": 0.3, "font.size": 10}):
        for target, res in result.targets.items():
            test = res.backtest.predictions
            y = test["y"].to_numpy(dtype=int)
            title = f"{target.capitalize()} ({res.model.info.get('label', target)})"
            origins = res.backtest.origins
            span = f"{origins[0].date()}..{origins[-1].date()}" if origins else "none"
            subtitle = (f"walk-forward backtest, {len(origins)} origins {span}: "
                        f"{len(y):,} rows, {int(y.sum()):,} positives")  # fmt: skip
            # No backtest rows (too little data): empty axes say so rather than fail.
            names = [c for c in CONTENDERS if c in test.columns] if len(test) else []
            for name, draw in (("roc", _roc), ("pr", _pr), ("calibration", _calibration),
                               ("lift", _lift)):  # fmt: skip
                fig, ax = plt.subplots(figsize=(7, 5.5))
                draw(ax, test, names)
                ax.set_title(f"{title}: {_TITLES[name]}\n{subtitle}", fontsize=11)
                written.append(_save(fig, out_dir / f"{target}_{name}.png"))
            written += _shap_plots(plt, res, snaps, out_dir, target, title)
    return written


def plot_data_paths(out_dir: Path, targets: list[str]) -> list[Path]:
    """The files `write_plot_data` writes for `targets`, in its order."""
    return [Path(out_dir) / f"{t}_{name}.csv" for t in targets for name in DATA_NAMES]


def write_plot_data(result: TrainResult, out_dir: Path) -> list[Path]:
    """Write the data behind every target's curves as CSV into `out_dir` (atomically).

    Every contender has its column, empty where it has no value (no truth file: no
    oracle), so `dvc.yaml` can name the same fields for every run.
    """
    from features.io import write_text

    written = []
    for target, res in result.targets.items():
        for name, table in plot_tables(res).items():
            path = Path(out_dir) / f"{target}_{name}.csv"
            write_text(table.to_csv(index=False, float_format="%.6g"), path)
            written.append(path)
    return written


def plot_tables(res: TargetResult) -> dict[str, pd.DataFrame]:
    """The tables behind one target's curves, keyed as in `DATA_NAMES`."""
    test = res.backtest.predictions
    names = [c for c in CONTENDERS if c in test.columns] if len(test) else []
    return {"roc": roc_table(test, names), "calibration": calibration_table(test),
            "lift": lift_table(test, names),
            "backtest_auc": origin_table(res.backtest.per_origin)}  # fmt: skip


def roc_table(test: pd.DataFrame, names: list[str], points: int = ROC_POINTS) -> pd.DataFrame:
    """Each contender's true positive rate at `points` evenly spaced false positive rates.

    The value at a rate is the ROC step's: the best recall with at most that rate of false
    positives (curves of different runs share the x values, so they overlay).
    """
    from sklearn.metrics import roc_curve

    grid = np.linspace(0.0, 1.0, points)
    out = pd.DataFrame({"fpr": grid, **{c: np.nan for c in CONTENDERS}})
    for name in names:
        y, p = _scored(test, name)
        if len(np.unique(y)) == 2:
            fpr, tpr, _ = roc_curve(y, p)  # fpr starts at 0 and never decreases
            out[name] = tpr[np.searchsorted(fpr, grid, side="right") - 1]
    return out


def calibration_table(test: pd.DataFrame) -> pd.DataFrame:
    """LightGBM's calibration bins (1 = lowest scores): mean predicted, observed rate, rows."""
    cols = ["bin", "predicted", "observed", "rows"]
    if "lightgbm" not in test.columns or not len(test):
        return pd.DataFrame(columns=cols)
    y, p = _scored(test, "lightgbm")
    b = calibration_bins(y, np.clip(p, 0, 1)).reset_index(drop=True)
    return b.assign(bin=np.arange(1, len(b) + 1))[cols]


def lift_table(test: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Each contender's positive rate per risk decile (1 = highest scores) over the base rate."""
    out = pd.DataFrame({"decile": np.arange(1, 11), **{c: np.nan for c in CONTENDERS}})
    for name in names:
        out[name] = decile_lift(*_scored(test, name))
    return out


def origin_table(per_origin: list[dict]) -> pd.DataFrame:
    """Each contender's ROC AUC per backtest origin (1 = oldest), with its date and size."""
    cols = ["origin", "as_of", "rows", "positives", "trees", *CONTENDERS]
    return pd.DataFrame(
        [{"origin": i, "as_of": o["origin"], "rows": o["rows"], "positives": o["positives"],
          "trees": o["trees"], **{c: o.get(f"{c}_roc_auc", np.nan) for c in CONTENDERS}}
         for i, o in enumerate(per_origin, start=1)],
        columns=cols,
    )  # fmt: skip


# ----- curves ------------------------------------------------------------------------
_TITLES = {"roc": "ROC curve", "pr": "precision-recall curve",
           "calibration": "calibration (10 equal-frequency bins)",
           "lift": "lift by risk decile"}  # fmt: skip


def _scored(test: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores of one contender on the rows it scored (the oracle may miss some)."""
    ok = test[name].notna().to_numpy()
    return test["y"].to_numpy(dtype=int)[ok], test[name].to_numpy(dtype=float)[ok]


def _two_classes(ax: Axes, y: np.ndarray) -> bool:
    if len(np.unique(y)) == 2:
        return True
    ax.text(0.5, 0.5, "not defined: the backtest holds one class only",
            ha="center", va="center", transform=ax.transAxes)  # fmt: skip
    return False


def _roc(ax: Axes, test: pd.DataFrame, names: list[str]) -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=1, ls=":", label="Random (AUC 0.500)")
    for name in names:
        y, p = _scored(test, name)
        if not _two_classes(ax, y):
            return
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{_LABEL[name]} (AUC {roc_auc_score(y, p):.3f})", **_STYLE[name])
    ax.set(xlabel="False positive rate", ylabel="True positive rate (recall)",
           xlim=(0, 1), ylim=(0, 1.01))  # fmt: skip
    ax.legend(loc="lower right")


def _pr(ax: Axes, test: pd.DataFrame, names: list[str]) -> None:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    base = float(test["y"].mean())
    ax.axhline(base, color="#bbbbbb", lw=1, ls=":", label=f"Base rate ({base:.3f})")
    for name in names:
        y, p = _scored(test, name)
        if not _two_classes(ax, y):
            return
        prec, rec, _ = precision_recall_curve(y, p)
        ap = average_precision_score(y, p)
        ax.step(rec, prec, where="post", label=f"{_LABEL[name]} (PR AUC {ap:.3f})",
                **_STYLE[name])  # fmt: skip
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper right")


def calibration_bins(y: np.ndarray, p: np.ndarray, bins: int = BINS) -> pd.DataFrame:
    """Mean prediction and observed rate per equal-frequency bin (the bins of the ECE)."""
    b = equal_frequency_bins(p, bins)
    g = pd.DataFrame({"predicted": p, "observed": y.astype(float)}).groupby(b)
    return g.mean().assign(rows=g.size())


def _calibration(ax: Axes, test: pd.DataFrame, names: list[str]) -> None:
    top = 0.0
    for name in names:
        y, p = _scored(test, name)
        p = np.clip(p, 0, 1)
        b = calibration_bins(y, p)
        ece = expected_calibration_error(y.astype(float), p)
        ax.plot(b["predicted"], b["observed"], marker="o", ms=4,
                label=f"{_LABEL[name]} (ECE {ece:.3f})", **_STYLE[name])  # fmt: skip
        top = max(top, float(b["predicted"].max()), float(b["observed"].max()))
    top = min(1.0, top * 1.08) if top > 0 else 1.0
    ax.plot([0, top], [0, top], color="#bbbbbb", lw=1, ls=":", label="Perfect calibration")
    ax.set(xlabel="Mean predicted probability (per bin)", ylabel="Observed rate (per bin)",
           xlim=(0, top), ylim=(0, top))  # fmt: skip
    ax.legend(loc="upper left")


def decile_lift(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Positive rate per score decile (1 = highest scores) over the base rate."""
    base = y.mean()
    parts = np.array_split(np.argsort(-p, kind="stable"), 10)
    return np.array([y[b].mean() / base if len(b) and base > 0 else np.nan for b in parts])


def _lift(ax: Axes, test: pd.DataFrame, names: list[str]) -> None:
    if not names:
        return
    width = 0.8 / len(names)
    deciles = np.arange(1, 11)
    for i, name in enumerate(names):
        y, p = _scored(test, name)
        lift = decile_lift(y, p)
        ax.bar(deciles + (i - (len(names) - 1) / 2) * width, lift, width=width,
               color=_STYLE[name]["color"], alpha=0.9 if name != "oracle" else 0.5,
               label=f"{_LABEL[name]} (top decile {lift[0]:.2f}x)")  # fmt: skip
    ax.axhline(1.0, color="#555555", lw=1, ls=":", label="No lift (base rate)")
    ax.set(xlabel="Risk decile (1 = highest predicted probability)",
           ylabel="Positive rate / base rate", xticks=deciles)  # fmt: skip
    ax.legend(loc="upper right")


# ----- SHAP ----------------------------------------------------------------------------
def rows_of_backtest(res: TargetResult, snaps: SnapshotTable) -> pd.DataFrame:
    """The snapshot rows the backtest predicted, in its order (joined on the keys)."""
    keys = [Col.ACCOUNT_ID, Col.AS_OF]
    pred = res.backtest.predictions[keys]
    return pred.merge(snaps.frame, on=keys, how="left", validate="1:1")


def shap_sample(model: HealthModel, rows: pd.DataFrame, n: int = SHAP_SAMPLE,
                seed: int = SEED) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """SHAP values (without bias) and display values of at most `n` rows (fixed sample).

    Display values are numeric for shap's colouring: categories become their codes.
    """
    if len(rows) > n:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=n, replace=False))
        rows = rows.iloc[pick]
    values = model.contributions(rows).drop(columns=BIAS)
    x = model.prepare(rows)
    shown = pd.DataFrame(
        {c: (x[c].cat.codes.replace(-1, np.nan).astype(float)
             if isinstance(x[c].dtype, pd.CategoricalDtype) else x[c]) for c in x.columns},
        index=x.index,
    )  # fmt: skip
    return values, shown


def family_importance(model: HealthModel, values: pd.DataFrame) -> pd.Series:
    """Mean |SHAP| per feature summed per family, largest first."""
    fam = {f.name: Family(f.family).value for f in model.features}
    per_feature = values.abs().mean()
    return per_feature.groupby(per_feature.index.map(fam)).sum().sort_values(ascending=False)


def _shap_plots(plt, res: TargetResult, snaps: SnapshotTable, out_dir: Path, target: str,
                title: str) -> list[Path]:  # fmt: skip
    import shap

    model = res.model
    rows = rows_of_backtest(res, snaps)
    values, shown = shap_sample(model, rows if len(rows) else snaps.frame)
    sample = f"champion's SHAP values (log-odds) on {len(values):,} backtest rows"
    out = []
    for name, kind in (("shap_bar", "bar"), ("shap_beeswarm", "dot")):
        fig = plt.figure()
        shap.summary_plot(values.to_numpy(), shown, feature_names=list(values.columns),
                          plot_type=kind, max_display=20, show=False, rng=SEED)  # fmt: skip
        fig = plt.gcf()
        what = "mean |SHAP| per feature" if kind == "bar" else "SHAP value per row and feature"
        fig.axes[0].set_title(f"{title}: {what}\n{sample}", fontsize=11)
        if kind == "bar":
            fig.axes[0].set_xlabel("Mean |SHAP value| (impact on log-odds)")
        out.append(_save(fig, out_dir / f"{target}_{name}.png"))
    imp = family_importance(model, values)
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(imp) + 2))
    ax.barh(imp.index[::-1], imp.to_numpy()[::-1], color="#1f77b4")
    for i, v in enumerate(imp.to_numpy()[::-1]):
        ax.text(v, i, f" {v:.3f}", va="center", fontsize=9)
    ax.set(xlabel="Sum over the family's features of mean |SHAP value| (log-odds)",
           ylabel="Feature family")  # fmt: skip
    ax.set_xlim(0, float(imp.max()) * 1.2 if len(imp) and imp.max() > 0 else 1)
    ax.set_title(f"{title}: SHAP importance by feature family\n{sample}", fontsize=11)
    out.append(_save(fig, out_dir / f"{target}_shap_families.png"))
    return out


def _save(fig: Figure, path: Path) -> Path:
    """Write `fig` to `path` atomically (temporary file in the same folder, then rename)."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
