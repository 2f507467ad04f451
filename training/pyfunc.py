"""The MLflow pyfunc wrapper of a `HealthModel` (imports mlflow: import this module lazily).

The logged model holds the plain `HealthModel` folder (booster.txt + model.json) as its
`model` artifact; `predict` returns a DataFrame with one column, `probability`, the
calibrated probability of the target (never a label). Serving does not need this
wrapper: it loads the folder with `training.tracking.load_champion`.

Inputs follow the signature: numeric features as double, categoricals as string. MLflow's
schema enforcement rejects int64 where it expects double: cast first (`model_input` does).

The model is logged "from code" (`pyfunc_entry.py`, nothing pickled), so loading it needs the
`cshealth` code (`training`, `features`) importable, besides the pinned `pip_requirements`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from training.model import HealthModel

#: the artifact key under which the HealthModel folder is logged
ARTIFACT_KEY = "model"
#: the one output column of `predict`
OUTPUT_COLUMN = "probability"

_REQUIREMENTS = ("mlflow", "lightgbm", "numpy", "pandas", "scikit-learn", "pydantic", "pyarrow")


def pip_requirements() -> list[str]:
    """Explicit pins of what the wrapper needs (inference is slow and over-broad)."""
    out = []
    for name in _REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


class HealthModelPyfunc(mlflow.pyfunc.PythonModel):
    """Calibrated probabilities of one target from the logged `HealthModel` folder."""

    def load_context(self, context) -> None:
        self.model = HealthModel.load(context.artifacts[ARTIFACT_KEY])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        proba = self.model.predict_proba(model_input)
        return pd.DataFrame({OUTPUT_COLUMN: proba}, index=model_input.index)


def signature(model: HealthModel) -> ModelSignature:
    """double for numeric features (ints are cast before scoring), string for categoricals."""
    inputs = Schema(
        [ColSpec("string" if f.categorical else "double", f.name) for f in model.features]
    )
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("double", OUTPUT_COLUMN)]))


def model_input(model: HealthModel, df: pd.DataFrame) -> pd.DataFrame:
    """`df`'s feature columns in the signature's types: float64, or str/None for categoricals."""
    out = {}
    for f in model.features:
        col = df[f.name]
        if f.categorical:
            out[f.name] = col.astype("object").where(col.notna(), None)
        else:
            out[f.name] = pd.to_numeric(col).astype("float64")
    return pd.DataFrame(out, index=df.index)


def input_example(model: HealthModel, df: pd.DataFrame, rows: int = 3) -> pd.DataFrame:
    """`rows` rows of `df` with the fewest missing values, in the signature's types."""
    x = model_input(model, df)
    order = np.argsort(x.isna().sum(axis=1).to_numpy(), kind="stable")[:rows]
    return x.iloc[order].reset_index(drop=True)
