"""The MLflow pyfunc wrapper of a `HealthModel`, logged self-contained (imports mlflow: lazily).

A logged model (see `training.tracking`) holds everything `mlflow.pyfunc.load_model`,
`mlflow models serve`, `build-docker` and `spark_udf` need where cshealth is not installed:

- the plain `HealthModel` folder (booster.txt + model.json) as its `model` artifact;
- `code/`: the few project modules this wrapper imports (`CODE_FILES`, nothing else of
  the project), which MLflow puts on `sys.path` before it runs `pyfunc_entry.py`;
- `requirements.txt`: exactly `pip_requirements()`, the pinned packages those modules import;
- `model_card.md`: what it predicts, on which data, how well, for what.

`predict` returns a DataFrame with one column, `probability`, the calibrated probability of
the target (never a label). Serving does not need this wrapper: it loads the folder with
`training.tracking.load_champion`.

Inputs follow the signature: numeric features as double, categoricals as string, every
column optional: an absent column, or None / NaN in a row, is a missing value, which the
model handles as in training. MLflow's schema enforcement rejects int64 where it expects
double: cast first (`model_input` does).
"""

from __future__ import annotations

import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

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
#: the project modules the wrapper imports, transitively (paths from the repository root):
#: shipped with the model as its code; a new project import in them must be added here
CODE_FILES = (
    "features/__init__.py", "features/meta.py",
    "training/__init__.py", "training/model.py", "training/pyfunc.py", "training/settings.py",
)  # fmt: skip
_ROOT = Path(__file__).resolve().parents[1]

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


def stage_code(dest: Path) -> list[str]:
    """Copy `CODE_FILES` into `dest` as packages; the package folders, for `code_paths`.

    MLflow copies each folder to the model's `code/` by its name: `code/training/...`.
    """
    for rel in CODE_FILES:
        target = Path(dest) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_ROOT / rel, target)
    return sorted({str(Path(dest) / Path(rel).parts[0]) for rel in CODE_FILES})


class HealthModelPyfunc(mlflow.pyfunc.PythonModel):
    """Calibrated probabilities of one target from the logged `HealthModel` folder."""

    def load_context(self, context) -> None:
        self.model = HealthModel.load(context.artifacts[ARTIFACT_KEY])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """One `probability` per row; absent feature columns count as missing values."""
        x = model_input.reindex(columns=self.model.feature_names)
        proba = self.model.predict_proba(x)
        return pd.DataFrame({OUTPUT_COLUMN: proba}, index=model_input.index)


def signature(model: HealthModel) -> ModelSignature:
    """double for numeric features (ints are cast before scoring), string for categoricals.

    Every input column is optional (`required=False`): the model takes missing values.
    """
    inputs = Schema([
        ColSpec("string" if f.categorical else "double", f.name, required=False)
        for f in model.features
    ])  # fmt: skip
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
