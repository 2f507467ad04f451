"""The model artifact: preprocessing + LightGBM booster + calibrator, in one object.

Scoring code never re-implements preprocessing: it calls `HealthModel.predict_proba`
or `contributions` on a frame with the feature columns (extra columns ignored,
missing values allowed, unknown categories treated as missing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from features.meta import Feature, Good, from_dict, to_dict
from training.settings import LightGBMParams

BIAS = "bias"


@dataclass(frozen=True)
class Calibrator:
    """Maps raw LightGBM scores (log-odds) to probabilities: Platt or isotonic."""

    kind: str
    params: dict[str, list[float]]

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.kind == "platt":
            a, b = self.params["coef"]
            return 1.0 / (1.0 + np.exp(-(a * raw + b)))
        return np.interp(raw, self.params["x"], self.params["y"])

    @staticmethod
    def fit(kind: str, raw: np.ndarray, y: np.ndarray) -> Calibrator:
        if kind == "platt":
            lr = LogisticRegression(C=1e6, max_iter=1000).fit(raw.reshape(-1, 1), y)
            return Calibrator("platt", {"coef": [float(lr.coef_[0, 0]), float(lr.intercept_[0])]})
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y)
        return Calibrator(
            "isotonic", {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
        )


def choose_calibrator(kind: str, raw: np.ndarray, y: np.ndarray, seed: int) -> Calibrator:
    """Fit `kind`; with "auto", pick Platt or isotonic by cross-validated Brier on `raw`."""
    if kind != "auto":
        return Calibrator.fit(kind, raw, y)
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    loss = {"platt": 0.0, "isotonic": 0.0}
    for fit_idx, eval_idx in folds.split(raw.reshape(-1, 1), y):
        for k in loss:
            p = Calibrator.fit(k, raw[fit_idx], y[fit_idx])(raw[eval_idx])
            loss[k] += float(np.mean((p - y[eval_idx]) ** 2))
    return Calibrator.fit(min(loss, key=loss.__getitem__), raw, y)


def monotone_constraints(features: list[Feature], healthy_is_positive: bool) -> list[int]:
    """LightGBM constraints from metadata: healthy direction lowers churn, raises expansion."""
    sign = 1 if healthy_is_positive else -1
    out = []
    for f in features:
        if f.categorical or f.good == Good.NEUTRAL:
            out.append(0)
        else:
            out.append(sign if f.good == Good.HIGHER else -sign)
    return out


@dataclass
class HealthModel:
    """One target's model: feature schema, categories, booster and calibrator."""

    target: str
    features: list[Feature]
    categories: dict[str, list[str]]
    booster: lgb.Booster
    calibrator: Calibrator
    info: dict = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def prepare(self, df: pd.DataFrame) -> pd.DataFrame:
        """The model's input frame: feature columns in order, numeric float, categories fixed."""
        missing = [n for n in self.feature_names if n not in df.columns]
        if missing:
            raise KeyError(f"{self.target} model: missing feature columns {missing}")
        out = {}
        for f in self.features:
            col = df[f.name]
            if f.categorical:
                out[f.name] = pd.Categorical(
                    col.astype("object"), categories=self.categories[f.name]
                )
            else:
                out[f.name] = pd.to_numeric(col, errors="raise").astype("float64")
        return pd.DataFrame(out, index=df.index)

    def raw_score(self, df: pd.DataFrame) -> np.ndarray:
        return self.booster.predict(self.prepare(df), raw_score=True)

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Calibrated probability of the target for each row."""
        return np.clip(self.calibrator(self.raw_score(df)), 0.0, 1.0)

    def contributions(self, df: pd.DataFrame, prepared: bool = False) -> pd.DataFrame:
        """SHAP values (log-odds) per feature plus `bias`; rows sum to the raw score.

        With `prepared`, `df` is already the output of `prepare` (not converted again).
        """
        x = df if prepared else self.prepare(df)
        contrib = self.booster.predict(x, pred_contrib=True)
        return pd.DataFrame(contrib, columns=[*self.feature_names, BIAS], index=df.index)

    # ----- persistence -----------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write booster.txt and model.json into folder `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(path / "booster.txt"))
        meta = {
            "target": self.target,
            "features": [to_dict(f) for f in self.features],
            "categories": self.categories,
            "calibrator": {"kind": self.calibrator.kind, "params": self.calibrator.params},
            "info": self.info,
        }  # fmt: skip
        (path / "model.json").write_text(json.dumps(meta, indent=2, default=str))

    @classmethod
    def load(cls, path: Path) -> HealthModel:
        path = Path(path)
        meta = json.loads((path / "model.json").read_text())
        return cls(
            target=meta["target"],
            features=[from_dict(f) for f in meta["features"]],
            categories=meta["categories"],
            booster=lgb.Booster(model_file=str(path / "booster.txt")),
            calibrator=Calibrator(meta["calibrator"]["kind"], meta["calibrator"]["params"]),
            info=meta["info"],
        )


def fit_model(
    target: str,
    label: str,
    features: list[Feature],
    train: pd.DataFrame,
    valid: pd.DataFrame,
    params: LightGBMParams,
    calibration: str,
    seed: int,
    monotone: bool,
    healthy_is_positive: bool,
) -> HealthModel:
    """Train the booster (early stopping on `valid`) and calibrate it on `valid`."""
    categories = {
        f.name: sorted(train[f.name].dropna().astype(str).unique().tolist())
        for f in features
        if f.categorical
    }
    draft = HealthModel(target, features, categories, None, Calibrator("platt", {"coef": [1, 0]}))  # type: ignore[arg-type]
    x_tr, x_va = draft.prepare(train), draft.prepare(valid)
    y_tr = train[label].astype(int).to_numpy()
    y_va = valid[label].astype(int).to_numpy()
    pos = max(int(y_tr.sum()), 1)
    lgb_params = {
        "objective": "binary",
        "learning_rate": params.learning_rate,
        "num_leaves": params.num_leaves,
        "min_child_samples": params.min_child_samples,
        "bagging_fraction": params.subsample,
        "bagging_freq": 1,
        "feature_fraction": params.colsample_bytree,
        "lambda_l2": params.reg_lambda,
        # Imbalance: up-weight positives moderately; calibration restores probabilities.
        "scale_pos_weight": float(np.sqrt((len(y_tr) - pos) / pos)),
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 2,
        "verbosity": -1,
        # Stop on ranking quality: with up-weighted positives the raw log-loss drifts
        # while ranking still improves, and calibration comes afterwards anyway.
        "metric": params.early_stopping_metric,
    }
    if monotone:
        lgb_params["monotone_constraints"] = monotone_constraints(features, healthy_is_positive)
    booster = lgb.train(
        lgb_params,
        lgb.Dataset(x_tr, y_tr),
        num_boost_round=params.n_estimators,
        valid_sets=[lgb.Dataset(x_va, y_va)],
        callbacks=[lgb.early_stopping(params.early_stopping_rounds, verbose=False)],
    )
    raw_va = booster.predict(x_va, raw_score=True, num_iteration=booster.best_iteration)
    calibrator = choose_calibrator(calibration, raw_va, y_va, seed)
    booster.free_network()
    model = HealthModel(target, features, categories, booster, calibrator)
    model.booster = lgb.Booster(
        model_str=booster.model_to_string(num_iteration=booster.best_iteration)
    )
    model.info["best_iteration"] = int(booster.best_iteration)
    return model
