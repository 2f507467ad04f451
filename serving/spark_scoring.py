"""Batch-scoring probabilities on Apache Spark through `mlflow.pyfunc.spark_udf`.

`cshealth score --engine spark`: each champion's registered version (a self-contained
models-from-code pyfunc, `training.pyfunc`) scores the accounts' rows as a Spark pandas
UDF; the driver collects only (account_id, p_churn, p_expansion) and hands them to
`Scorer.score_batch`, which still computes the explanations on the driver from the same
model versions. The URIs pin exact versions (`models:/cshealth-churn/3`), never the
`champion` alias, which may move while a run scores.

Needs pyspark (the `spark` extra) and mlflow on the executors, in the same versions as
the driver (`env_manager="local"`: the executors' Python environment is used as is). On a
local master the UDF's Python workers run the driver's interpreter; on a cluster set
`PYSPARK_PYTHON` to an interpreter holding the model's requirements.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.contract import Col
from serving.predictor import ModelPair
from training import tracking

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)


def probability_column(target: str) -> str:
    """The collected column of `target`'s probability (`p_churn`)."""
    return f"p_{target}"


def version_uri(target: str, version: int | str) -> str:
    """The registry URI of one exact version of `target`'s model."""
    return f"models:/{tracking.registered_name(target)}/{version}"


def model_uris(models: ModelPair) -> dict[str, str]:
    """Per target, the URI of the registered version `models` holds (the scorer's)."""
    return {target: version_uri(target, version) for target, _, version in models.by_target()}


def _schema(models: ModelPair) -> StructType:
    """account_id, then every feature either model reads: string if categorical, else double."""
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    fields = {Col.ACCOUNT_ID: StructField(Col.ACCOUNT_ID, StringType(), False)}
    for _, model, _ in models.by_target():
        for f in model.features:
            kind = StringType() if f.categorical else DoubleType()
            fields.setdefault(f.name, StructField(f.name, kind, True))
    return StructType(list(fields.values()))


def input_frame(spark: SparkSession, rows: pd.DataFrame, models: ModelPair) -> DataFrame:
    """`rows` as a Spark DataFrame of account_id and the models' inputs in the signature's
    types (`training.pyfunc.model_input`); an absent feature column is all missing."""
    from training.pyfunc import model_input

    full = rows.reindex(columns=models.feature_names)
    x = pd.DataFrame({Col.ACCOUNT_ID: rows[Col.ACCOUNT_ID].astype(str).to_numpy()})
    for _, model, _ in models.by_target():
        typed = model_input(model, full).reset_index(drop=True)
        for name in typed.columns.difference(x.columns, sort=False):
            x[name] = typed[name]
    schema = _schema(models)
    return spark.createDataFrame(x[schema.fieldNames()], schema=schema)


#: the UDF workers' interpreter PySpark takes when `PYSPARK_PYTHON` is unset (from PATH)
PYSPARK_DEFAULT_PYTHON = "python3"


@contextlib.contextmanager
def worker_python(spark: SparkSession) -> Iterator[None]:
    """UDFs made in the block run on the driver's interpreter when the master is local.

    Without `PYSPARK_PYTHON`, PySpark starts UDF workers with `python3` from PATH, which
    may lack mlflow and lightgbm (a venv not on PATH). Local executors share this machine,
    so the driver's interpreter is the right one; an interpreter set by `PYSPARK_PYTHON`,
    or any on a cluster, is left as it is.
    """
    sc = spark.sparkContext
    if not sc.master.startswith("local") or sc.pythonExec != PYSPARK_DEFAULT_PYTHON:
        yield
        return
    before, sc.pythonExec = sc.pythonExec, sys.executable
    try:
        yield
    finally:
        sc.pythonExec = before


#: the start of MLflow's advice to recreate the training environment (conda) with every
#: `env_manager="local"` UDF: the logged requirements are pinned to this environment's
_LOCAL_ENV_ADVICE = 'Calling `spark_udf()` with `env_manager="local"`'


@contextlib.contextmanager
def _without_env_advice() -> Iterator[None]:
    """Drop MLflow's conda advice in the block (its requirement mismatch warnings stay)."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_LOCAL_ENV_ADVICE)

    logger = logging.getLogger("mlflow.pyfunc")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def align_by_account(
    ids: pd.Series, got: pd.DataFrame, targets: list[str]
) -> dict[str, np.ndarray]:
    """`got` (account_id, p_<target>...) in the order of `ids`; RuntimeError when an account
    is missing or repeated."""
    got = got.set_index(Col.ACCOUNT_ID)
    lost = ids[~ids.isin(got.index)]
    if len(lost) or got.index.has_duplicates:
        shown = ", ".join(lost.head(5))
        raise RuntimeError(f"Spark returned {len(got)} probabilities for {len(ids)} accounts: "
                           f"{len(lost)} missing ({shown or 'none'})")  # fmt: skip
    got = got.reindex(ids.to_numpy())
    return {t: got[probability_column(t)].to_numpy(dtype=float) for t in targets}


def spark_probabilities(
    spark: SparkSession,
    rows: pd.DataFrame,
    models: ModelPair,
    uris: Mapping[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """Per target, the calibrated probability of each of `rows` (one per account, in order),
    computed on Spark by `mlflow.pyfunc.spark_udf` over the registered model versions.

    `uris`: per target the model to apply (default `model_uris(models)`: the versions whose
    local copies explain the scores); the registry is the settings' (`MLFLOW_TRACKING_URI`).
    """
    import mlflow.pyfunc
    from pyspark.sql import functions as F

    ids = rows[Col.ACCOUNT_ID].astype(str).reset_index(drop=True)
    if ids.duplicated().any():
        raise ValueError(f"{ids.duplicated().sum()} duplicate account ids: one row per account")
    uris = dict(uris or model_uris(models))
    t0 = time.perf_counter()
    tracking.client()  # sets the registry mlflow reads the URIs from
    df = input_frame(spark, rows, models)
    targets = []
    with worker_python(spark), _without_env_advice():
        for target, model, _ in models.by_target():
            udf = mlflow.pyfunc.spark_udf(spark, uris[target], result_type="double",
                                          env_manager="local")  # fmt: skip
            inputs = F.struct(*[F.col(c) for c in model.feature_names])
            df = df.withColumn(probability_column(target), udf(inputs))
            targets.append(target)
    got = df.select(Col.ACCOUNT_ID, *map(probability_column, targets)).toPandas()
    log.info("spark: %d accounts scored with %s in %.1f s", len(ids),
             ", ".join(uris[t] for t in targets), time.perf_counter() - t0)  # fmt: skip
    return align_by_account(ids, got, targets)
