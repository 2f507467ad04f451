"""Evaluation metrics for a probability (or risk score) against binary outcomes."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

METRIC_NAMES = (
    "roc_auc", "pr_auc", "brier", "ece", "top_decile_lift", "top_decile_recall",
    "top_decile_arr_share",
)  # fmt: skip


def equal_frequency_bins(p: np.ndarray, bins: int = 10) -> np.ndarray:
    """Bin index (0..bins-1) per score: equal-frequency by rank; tied scores share a bin.

    A score's bin is `floor(bins * (number of scores below it) / n)`, so distinct
    scores fill the bins equally and the result does not depend on the row order
    (plateaus of an isotonic calibrator or a rule score are never split at random).
    """
    p = np.asarray(p, dtype=float)
    below = np.searchsorted(np.sort(p), p, side="left")
    return np.minimum(below * bins // max(len(p), 1), bins - 1)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE over `bins` equal-frequency bins: sum_b (n_b / n) |mean(y_b) - mean(p_b)|."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    if len(p) == 0:
        return float("nan")
    b = equal_frequency_bins(p, bins)
    gap = np.bincount(b, weights=y, minlength=bins) - np.bincount(b, weights=p, minlength=bins)
    return float(np.abs(gap).sum() / len(p))


def top_decile(p: np.ndarray) -> np.ndarray:
    """Mask of the 10 % highest scores (ties broken by order, exactly ceil(n / 10) rows)."""
    k = max(1, int(np.ceil(len(p) / 10)))
    mask = np.zeros(len(p), dtype=bool)
    mask[np.argsort(-p, kind="stable")[:k]] = True
    return mask


def evaluate(y: np.ndarray, p: np.ndarray, mrr: np.ndarray) -> dict[str, float]:
    """All metrics; `mrr` weights the share of positive ARR caught in the top decile."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    mrr = np.nan_to_num(np.asarray(mrr, dtype=float))
    top = top_decile(p)
    base = y.mean()
    both = len(np.unique(y)) == 2
    arr = (mrr * y).sum()
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "brier": float(brier_score_loss(y, np.clip(p, 0, 1))),
        "ece": expected_calibration_error(y, np.clip(p, 0, 1)),
        "top_decile_lift": float(y[top].mean() / base) if base > 0 else float("nan"),
        "top_decile_recall": float(y[top].sum() / y.sum()) if y.sum() > 0 else float("nan"),
        "top_decile_arr_share": float((mrr * y)[top].sum() / arr) if arr > 0 else float("nan"),
    }


# ----- weighted metrics for the bootstrap -------------------------------------------------
# Each function takes a (B, n) matrix of row weights (bootstrap resample counts) over rows
# already sorted by score, descending (`np.argsort(-p, kind="stable")`, the order
# `top_decile` uses), and returns one value per resample. With all weights 1 they equal
# `evaluate`'s figures (tested), so the intervals are intervals of the very same metrics.


def _group_starts(p_sorted: np.ndarray) -> np.ndarray:
    """Start index of each run of equal scores (tied scores form one threshold)."""
    change = np.flatnonzero(np.diff(p_sorted) != 0) + 1
    return np.concatenate([[0], change])


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _weighted_auc_ap(
    w: np.ndarray, y: np.ndarray, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC (ties count half) and average precision, one per row of `w`."""
    wp = np.add.reduceat(w * y, starts, axis=1)  # positive weight per threshold group
    wn = np.add.reduceat(w * (1 - y), starts, axis=1)
    tot_p, tot_n = wp.sum(axis=1), wn.sum(axis=1)
    neg_below = tot_n[:, None] - np.cumsum(wn, axis=1)  # negatives scored lower
    auc = _safe_div((wp * (neg_below + 0.5 * wn)).sum(axis=1), tot_p * tot_n)
    tp, fp = np.cumsum(wp, axis=1), np.cumsum(wn, axis=1)
    precision = _safe_div(tp, tp + fp)
    ap = _safe_div(np.nansum(wp * precision, axis=1), tot_p)
    return auc, np.where(tot_n > 0, ap, np.nan)


def weighted_metrics(
    w: np.ndarray, y: np.ndarray, p: np.ndarray, mrr: np.ndarray, bins: np.ndarray
) -> dict[str, np.ndarray]:
    """`evaluate`'s metrics under row weights `w` (B, n); rows sorted by `p` descending.

    `bins` are the rows' calibration bins on the unweighted scores (kept fixed).
    """
    total = w.sum(axis=1)
    auc, ap = _weighted_auc_ap(w, y, _group_starts(p))
    brier = _safe_div((w * (p - y) ** 2).sum(axis=1), total)
    onehot = np.eye(int(bins.max()) + 1 if bins.size else 1)[bins]  # (n, bins)
    gap = (w * y) @ onehot - (w * p) @ onehot
    ece = _safe_div(np.abs(gap).sum(axis=1), total)
    before = np.cumsum(w, axis=1) - w  # weight ranked above each row
    top = before < 0.1 * total[:, None]
    pos = (w * y).sum(axis=1)
    top_pos = (w * y * top).sum(axis=1)
    arr = (w * y * mrr).sum(axis=1)
    return {
        "roc_auc": auc,
        "pr_auc": ap,
        "brier": brier,
        "ece": ece,
        "top_decile_lift": _safe_div(_safe_div(top_pos, (w * top).sum(axis=1)), pos / total),
        "top_decile_recall": _safe_div(top_pos, pos),
        "top_decile_arr_share": _safe_div((w * y * mrr * top).sum(axis=1), arr),
    }


def cluster_weights(groups: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Poisson(1) bootstrap weights (resamples, rows), drawn per group and shared by its rows.

    Rows of one account at several origins are not independent: resampling accounts
    rather than rows keeps the intervals honest.
    """
    codes, uniq = pd.factorize(pd.Series(groups), sort=True)
    rng = np.random.default_rng(seed)
    per_group = rng.poisson(1.0, size=(resamples, len(uniq))).astype(float)
    return per_group[:, codes]


def bootstrap_intervals(
    y: np.ndarray,
    p: np.ndarray,
    mrr: np.ndarray,
    groups: np.ndarray,
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of every metric, resampling `groups` (accounts) with replacement."""
    if resamples <= 0 or len(y) == 0:
        return {m: (float("nan"), float("nan")) for m in METRIC_NAMES}
    y, p, mrr = (np.asarray(a, dtype=float) for a in (y, p, mrr))
    order = np.argsort(-p, kind="stable")
    y, p, mrr, groups = y[order], p[order], np.nan_to_num(mrr[order]), np.asarray(groups)[order]
    bins = equal_frequency_bins(p)
    values: dict[str, list[np.ndarray]] = {m: [] for m in METRIC_NAMES}
    for start in range(0, resamples, 50):  # chunks bound the (resamples, rows) matrices
        w = cluster_weights(groups, min(50, resamples - start), seed + start)
        for m, v in weighted_metrics(w, y, np.clip(p, 0, 1), mrr, bins).items():
            values[m].append(v)
    q = ((1 - level) / 2 * 100, (1 + level) / 2 * 100)
    out = {}
    for m, parts in values.items():
        v = np.concatenate(parts)
        v = v[np.isfinite(v)]
        out[m] = tuple(float(x) for x in np.percentile(v, q)) if v.size else (np.nan, np.nan)
    return out  # type: ignore[return-value]


def paired_auc_difference(
    y: np.ndarray,
    p_new: np.ndarray,
    p_old: np.ndarray,
    groups: np.ndarray,
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """AUC(new) - AUC(old) on the same rows, with a paired (same resamples) interval."""
    y = np.asarray(y, dtype=float)
    diff = []
    for start in range(0, max(resamples, 1), 50):
        n = min(50, resamples - start) if resamples > 0 else 0
        w = np.vstack([np.ones(len(y)), cluster_weights(groups, n, seed + start)]) \
            if start == 0 else cluster_weights(groups, n, seed + start)  # fmt: skip
        aucs = []
        for p in (p_new, p_old):
            order = np.argsort(-np.asarray(p, dtype=float), kind="stable")
            auc, _ = _weighted_auc_ap(w[:, order], y[order], _group_starts(np.asarray(p)[order]))
            aucs.append(auc)
        diff.append(aucs[0] - aucs[1])
    d = np.concatenate(diff)
    point, boot = float(d[0]), d[1:][np.isfinite(d[1:])]
    if boot.size == 0:
        return point, float("nan"), float("nan")
    lo, hi = np.percentile(boot, ((1 - level) / 2 * 100, (1 + level) / 2 * 100))
    return point, float(lo), float(hi)


def tied_share(values: np.ndarray) -> float:
    """Share of values equal to at least one other value (0 when all are distinct)."""
    v = pd.Series(np.asarray(values, dtype=float))
    if len(v) == 0:
        return 0.0
    return float(v.duplicated(keep=False).mean())
