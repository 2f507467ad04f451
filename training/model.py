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
            return 1.0 / (1.0 + np.exp(-(a * np.asarray(raw, dtype=float) + b)))
        return np.interp(raw, self.params["x"], self.params["y"])

    @staticmethod
    def fit(kind: str, raw: np.ndarray, y: np.ndarray) -> Calibrator:
        """Fit `kind` ("platt" or "isotonic") on raw scores and 0/1 outcomes."""
        raw, y = np.asarray(raw, dtype=float), np.asarray(y, dtype=int)
        if len(np.unique(y)) < 2:
            # One class only: the best we know is its rate, the same for every score.
            rate = float(np.clip(y.mean() if len(y) else 0.0, 1e-4, 1 - 1e-4))
            return Calibrator("platt", {"coef": [0.0, float(np.log(rate / (1 - rate)))]})
        if kind == "platt":
            lr = LogisticRegression(C=1e6, max_iter=1000).fit(raw.reshape(-1, 1), y)
            return Calibrator("platt", {"coef": [float(lr.coef_[0, 0]), float(lr.intercept_[0])]})
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y)
        return Calibrator(
            "isotonic", {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
        )


def _folds(groups: np.ndarray, y: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leave-one-group-out folds (the backtest's origins); 3 stratified folds without groups."""
    uniq = np.unique(groups)
    if len(uniq) >= 2:
        return [(np.flatnonzero(groups != g), np.flatnonzero(groups == g)) for g in uniq]
    k = int(min(3, max(np.bincount(y.astype(int), minlength=2).min(), 1)))
    if k < 2:
        return []
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(folds.split(np.zeros(len(y)), y))


def cross_calibrate(kind: str, raw: np.ndarray, y: np.ndarray, groups: np.ndarray,
                    seed: int) -> np.ndarray:  # fmt: skip
    """Held-out calibrated probabilities: each fold mapped by a calibrator fitted on the rest."""
    out = Calibrator.fit(kind, raw, y)(raw)  # rows no fold holds out (never with >= 2 groups)
    for fit_idx, eval_idx in _folds(np.asarray(groups), np.asarray(y), seed):
        out[eval_idx] = Calibrator.fit(kind, raw[fit_idx], y[fit_idx])(raw[eval_idx])
    return np.clip(out, 0.0, 1.0)


#: isotonic must keep at least this share of scores untied to be chosen by "auto"
MAX_TIED_SHARE = 0.01


def choose_calibrator(
    kind: str, raw: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int
) -> tuple[Calibrator, dict[str, float]]:
    """Fit `kind`; "auto" is Platt unless isotonic wins on held-out Brier *and* keeps ranks.

    Isotonic regression maps ranges of scores onto one value: plateaus tie accounts
    with different risk, which a CSM reads as "the model cannot tell them apart". So
    it is chosen only when its held-out Brier is lower and at most `MAX_TIED_SHARE`
    of the held-out probabilities are tied. Returns the calibrator and the evidence.
    """
    from training.metrics import tied_share

    raw, y = np.asarray(raw, dtype=float), np.asarray(y, dtype=int)
    if kind != "auto":
        return Calibrator.fit(kind, raw, y), {}
    evidence: dict[str, float] = {}
    for k in ("platt", "isotonic"):
        p = cross_calibrate(k, raw, y, groups, seed)
        evidence[f"{k}_brier"] = float(np.mean((p - y) ** 2)) if len(y) else float("nan")
        evidence[f"{k}_tied_share"] = tied_share(p)
    iso_wins = (evidence["isotonic_brier"] < evidence["platt_brier"]
                and evidence["isotonic_tied_share"] <= MAX_TIED_SHARE)  # fmt: skip
    return Calibrator.fit("isotonic" if iso_wins else "platt", raw, y), evidence


def monotone_constraints(features: list[Feature], sign: int) -> list[int]:
    """LightGBM constraints from metadata: `sign` times each feature's healthy direction."""
    out = []
    for f in features:
        if f.categorical or f.good == Good.NEUTRAL or sign == 0:
            out.append(0)
        else:
            out.append(sign if f.good == Good.HIGHER else -sign)
    return out


def prepare_frame(
    features: list[Feature], categories: dict[str, list[str]], df: pd.DataFrame, who: str = "model"
) -> pd.DataFrame:
    """The model input: feature columns in order, numeric float, categories fixed.

    A category outside `categories` becomes missing, as LightGBM treats it.
    """
    missing = [f.name for f in features if f.name not in df.columns]
    if missing:
        raise KeyError(f"{who}: missing feature columns {missing}")
    out = {}
    for f in features:
        col = df[f.name]
        if f.categorical:
            out[f.name] = pd.Categorical(col.astype("object"), categories=categories[f.name])
        else:
            out[f.name] = pd.to_numeric(col, errors="raise").astype("float64")
    return pd.DataFrame(out, index=df.index)


def categories_of(features: list[Feature], frame: pd.DataFrame) -> dict[str, list[str]]:
    """The categories each categorical feature takes in `frame` (sorted: stable codes)."""
    return {
        f.name: sorted(frame[f.name].dropna().astype(str).unique().tolist())
        for f in features
        if f.categorical
    }


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
        return prepare_frame(self.features, self.categories, df, f"{self.target} model")

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


def lightgbm_params(
    params: LightGBMParams, y: np.ndarray, seed: int, constraints: list[int] | None
) -> dict:
    """LightGBM's parameter dict for one fit (deterministic for a seed)."""
    pos = max(int(y.sum()), 1)
    out = {
        "objective": "binary",
        "learning_rate": params.learning_rate,
        "num_leaves": params.num_leaves,
        "min_child_samples": params.min_child_samples,
        "bagging_fraction": params.subsample,
        "bagging_freq": 1,
        "feature_fraction": params.colsample_bytree,
        "lambda_l2": params.reg_lambda,
        # Imbalance: up-weight positives moderately; calibration restores probabilities.
        "scale_pos_weight": float(np.sqrt(max(len(y) - pos, 1) / pos)),
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        # One thread for small data: OpenMP threads spin-waiting under CPU contention made
        # small fits up to 40x slower here; large data gains from a second core.
        "num_threads": 1 if len(y) < LARGE_ROWS else 2,
        "verbosity": -1,
        # Stop on ranking quality: with up-weighted positives the raw log-loss drifts
        # while ranking still improves, and calibration comes afterwards anyway.
        "metric": params.validation_metric,
    }
    if constraints and any(constraints):
        out["monotone_constraints"] = constraints
    return out


#: from this many training rows LightGBM uses two threads
LARGE_ROWS = 30_000
#: trees a validation curve runs past its best before it stops
CURVE_PATIENCE = 100


def fit_curve(
    x: pd.DataFrame, y: np.ndarray, x_valid: pd.DataFrame, y_valid: np.ndarray,
    params: LightGBMParams, seed: int, constraints: list[int] | None = None,
) -> np.ndarray:  # fmt: skip
    """The validation metric after each of `n_estimators` trees (AUC: higher is better)."""
    record: dict = {}
    # Stop CURVE_PATIENCE trees past the best: the curve's flat end is all that is needed.
    lgb.train(lightgbm_params(params, y, seed, constraints), lgb.Dataset(x, y),
              num_boost_round=params.n_estimators,
              valid_sets=[lgb.Dataset(x_valid, y_valid)], valid_names=["valid"],
              callbacks=[lgb.record_evaluation(record),
                         lgb.early_stopping(CURVE_PATIENCE, verbose=False)])  # fmt: skip
    curve = np.asarray(record["valid"][params.validation_metric], dtype=float)
    # Log-loss falls as it improves: flip it so that the best tree count is the maximum.
    return curve if params.validation_metric == "auc" else -curve


def fit_booster(
    x: pd.DataFrame,
    y: np.ndarray,
    params: LightGBMParams,
    seed: int,
    rounds: int,
    constraints: list[int] | None = None,
    scored: pd.DataFrame | None = None,
) -> tuple[lgb.Booster, int]:
    """Train `rounds` trees; (booster, trees).

    With `scored` (the rows this model will score), trees are added (doubling, up to
    `n_estimators`) while more than `MAX_TIED_SHARE` of its distinct rows tie: accounts
    in regions without outcomes share every leaf until enough trees split them, and a
    CSM cannot rank accounts whose scores are equal. Ranking quality is flat there.
    """
    from training.metrics import tied_share

    lgb_params = lightgbm_params(params, y, seed, constraints)
    distinct = scored.drop_duplicates() if scored is not None else None
    while True:
        booster = lgb.train(lgb_params, lgb.Dataset(x, y), num_boost_round=rounds)
        if distinct is None or rounds >= params.n_estimators or len(np.unique(y)) < 2:
            break
        if tied_share(booster.predict(distinct, raw_score=True)) <= MAX_TIED_SHARE:
            break
        rounds = min(2 * rounds, params.n_estimators)
    booster.free_network()
    return booster, booster.current_iteration()
