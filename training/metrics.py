"""Evaluation metrics for a probability (or risk score) against binary outcomes."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

METRIC_NAMES = (
    "roc_auc", "pr_auc", "brier", "ece", "top_decile_lift", "top_decile_recall",
    "top_decile_arr_share",
)  # fmt: skip


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE over `bins` equal-frequency bins: sum_b (n_b / n) |mean(y_b) - mean(p_b)|."""
    order = np.argsort(p, kind="stable")
    parts = np.array_split(order, bins)
    n = len(p)
    return float(sum(len(b) / n * abs(y[b].mean() - p[b].mean()) for b in parts if len(b)))


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
