"""The health score: a documented, monotone map from churn probability, bands, and
family components expressed in health points.

    health = 100 / (1 + odds(p) / odds(m))        odds(x) = x / (1 - x)

where p is the calibrated churn probability and m `midpoint_churn_probability`: an
account at the midpoint scores 50, lower risk scores higher, and health falls
strictly as p rises. Bands: red below `red_below`, yellow below `yellow_below`,
green otherwise.

Components: the churn model's SHAP contributions (log-odds) summed per family are
rescaled so that they add up exactly to (health - baseline health), the baseline
being the health of an account at the model's average score (its SHAP bias).
A negative component is a family pulling health down.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

from serving.settings import HealthParams

_EPS = 1e-12


class Band(StrEnum):
    RED = "red"
    YELLOW = "yellow"
    GREEN = "green"


def health_score(p_churn: np.ndarray, params: HealthParams) -> np.ndarray:
    """0–100 health from churn probability (see the module docstring)."""
    p = np.clip(np.asarray(p_churn, dtype=float), _EPS, 1 - _EPS)
    m = params.midpoint_churn_probability
    return 100.0 / (1.0 + (p / (1 - p)) / (m / (1 - m)))


def band(health: np.ndarray, params: HealthParams) -> np.ndarray:
    """red / yellow / green per health score."""
    h = np.asarray(health, dtype=float)
    return np.where(
        h < params.red_below,
        Band.RED.value,
        np.where(h < params.yellow_below, Band.YELLOW.value, Band.GREEN.value),
    )


def component_points(
    families: np.ndarray, health: np.ndarray, base_health: np.ndarray
) -> np.ndarray:
    """Family log-odds contributions (rows × families) rescaled to sum to health - base."""
    families = np.asarray(families, dtype=float)
    total = families.sum(axis=1, keepdims=True)
    delta = (np.asarray(health, dtype=float) - np.asarray(base_health, dtype=float))[:, None]
    safe = np.where(np.abs(total) < _EPS, 1.0, total)
    # Risk up (positive log-odds) means health down, which the sign of delta carries.
    return np.where(np.abs(total) < _EPS, 0.0, families / safe * delta)
