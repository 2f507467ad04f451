"""Evaluation metrics for a probability (or risk score) against binary outcomes."""

from __future__ import annotations

import numpy as np
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
