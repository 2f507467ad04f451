"""Baselines scored on the same split: logistic regression and a hand-weighted rule score."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from features.meta import Feature
from training.model import Calibrator
from training.settings import RuleComponent


def logistic_baseline(features: list[Feature], seed: int) -> Pipeline:
    """Scaled numeric features (median-imputed, with missing flags) and one-hot categories."""
    num = [f.name for f in features if not f.categorical]
    cat = [f.name for f in features if f.categorical]
    pre = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True,
                                                keep_empty_features=True), StandardScaler()), num),
            # Dense one-hot: the sparse matrix made each solver step ~10x slower.
            ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="missing"),
                                  OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
             cat),
        ]
    )  # fmt: skip
    return Pipeline([("pre", pre), ("lr", LogisticRegression(max_iter=3000, random_state=seed))])


def _as_model_input(df: pd.DataFrame, features: list[Feature]) -> pd.DataFrame:
    out = df[[f.name for f in features]].copy()
    for f in features:
        if f.categorical:
            out[f.name] = out[f.name].astype("object").where(out[f.name].notna(), np.nan)
        else:
            out[f.name] = out[f.name].astype("float64")
    return out


def fit_logistic(
    features: list[Feature], train: pd.DataFrame, y: np.ndarray, seed: int
) -> Pipeline:
    """Fit the logistic baseline on the training rows and their 0/1 outcomes `y`."""
    model = logistic_baseline(features, seed)
    return model.fit(_as_model_input(train, features), np.asarray(y, dtype=int))


def predict_logistic(model: Pipeline, df: pd.DataFrame, features: list[Feature]) -> np.ndarray:
    return model.predict_proba(_as_model_input(df, features))[:, 1]


def rule_health(df: pd.DataFrame, rules: list[RuleComponent]) -> np.ndarray:
    """0–100 health: weighted mean of the components an account has data for (50 if none)."""
    total = np.zeros(len(df))
    weight = np.zeros(len(df))
    for r in rules:
        if r.feature not in df.columns:
            continue  # the family is absent: the score re-weights over the rest
        x = df[r.feature].astype("float64").to_numpy()
        score = np.clip((x - r.bad) / (r.good - r.bad), 0, 1) * 100
        ok = ~np.isnan(score)
        total[ok] += r.weight * score[ok]
        weight[ok] += r.weight
    return np.where(weight > 0, total / np.where(weight > 0, weight, 1), 50.0)


def fit_rule_calibrator(health: np.ndarray, y: np.ndarray, healthy_is_positive: bool) -> Calibrator:
    """Platt-map the rule score to probabilities on the training rows (risk = 100 - health)."""
    score = health if healthy_is_positive else 100 - health
    return Calibrator.fit("platt", score / 100, y)
