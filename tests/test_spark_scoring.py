"""Batch scoring on Spark (`cshealth score --engine spark`): same probabilities, same stored rows.

The champions v1 of the session's trained set-up (`serving_data.serving_setup`) score its
newest snapshot twice: in this process (`Scorer`) and on Spark `local[2]` through
`mlflow.pyfunc.spark_udf` over the registered versions (`serving.spark_scoring`). The
first test needs no Spark: `Scorer.score_batch` with given probabilities.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cshealth.config import load_config
from features.engine import SparkEngine
from features.snapshots import SnapshotTable
from serving.batch import newest_rows, score_latest
from serving.health import band, health_score
from serving.predictor import ModelPair, Scorer
from serving.spark_scoring import (
    PYSPARK_DEFAULT_PYTHON,
    align_by_account,
    model_uris,
    spark_probabilities,
    worker_python,
)
from serving.store import ScoreStore
from tests.serving_data import ServingSetup, environ, serving_setup
from training import tracking

PROBABILITIES = {"churn": "churn_probability", "expansion": "expansion_probability"}
#: stored fields that must be equal as they are (explanations are computed locally either way)
SAME = ("as_of", "band", "components", "reasons", "expansion_reasons", "context", "plays",
        "model_version", "missing_features", "name", "segment", "csm_id")  # fmt: skip
#: feature values blanked in some rows, and a column left out: missing values through Spark
BLANKED = ("mrr_usd", "plan", "active_users_30d", "nps_last")
DROPPED = "segment"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> ServingSetup:
    return serving_setup(tmp_path_factory)


@pytest.fixture(scope="module")
def scoring(setup: ServingSetup) -> tuple[pd.DataFrame, Scorer]:
    """The newest snapshot's rows and a Scorer over the registered champions (as the CLI)."""
    cfg = load_config(setup.params)
    with environ(setup.env()):
        (churn, v_churn), (exp, v_exp) = map(tracking.load_champion, PROBABILITIES)
    models = ModelPair(churn, exp, str(v_churn), str(v_exp))
    rows = newest_rows(SnapshotTable.read(setup.snapshots).frame)
    return rows, Scorer(models, cfg.health, cfg.explanations)


def _given(items: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {t: np.array([i[key] for i in items]) for t, key in PROBABILITIES.items()}


# ----- no Spark -------------------------------------------------------------------------------
@pytest.mark.slow
def test_score_batch_uses_given_probabilities(
    scoring: tuple[pd.DataFrame, Scorer], caplog: pytest.LogCaptureFixture
) -> None:
    rows, scorer = scoring
    local = scorer.score_batch(rows)
    n = len(rows)
    given = {"churn": np.linspace(0.01, 0.99, n), "expansion": np.full(n, 0.5)}
    with caplog.at_level(logging.WARNING, logger="serving.predictor"):
        items = scorer.score_batch(rows, local.peers, probabilities=given).items
    assert [i["churn_probability"] for i in items] == given["churn"].tolist()
    assert {i["expansion_probability"] for i in items} == {0.5}
    health = health_score(given["churn"], scorer.health)
    assert [i["health_score"] for i in items] == health.tolist()
    assert [i["band"] for i in items] == band(health, scorer.health).tolist()
    assert [i["band"] for i in items] != [i["band"] for i in local.items]
    # explanations: the local models' contributions, whatever the probabilities
    for key in ("reasons", "expansion_reasons", "context", "missing_features"):
        assert [i[key] for i in items] == [i[key] for i in local.items], key
    for target in PROBABILITIES:
        assert f"{n} of {n} given {target} probabilities differ from {target} v1's" in caplog.text

    caplog.clear()  # the local models' own probabilities: the very same items, no warning
    with caplog.at_level(logging.WARNING, logger="serving.predictor"):
        assert scorer.score_batch(rows, probabilities=_given(local.items)).items == local.items
    assert caplog.text == ""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("given", "error"),
    [({"churn": np.full(3, 0.1)}, "no expansion probabilities"),
     ({"churn": np.full(2, 0.1), "expansion": np.full(3, 0.1)}, r"shape \(2,\), expected \(3,\)"),
     ({"churn": [0.1, np.nan, 0.1], "expansion": np.full(3, 0.1)}, "missing or outside"),
     ({"churn": np.full(3, 0.1), "expansion": [0.1, 1.5, 0.1]}, "missing or outside")],
)  # fmt: skip
def test_score_batch_refuses_unusable_probabilities(
    scoring: tuple[pd.DataFrame, Scorer], given: dict, error: str
) -> None:
    rows, scorer = scoring
    with pytest.raises(ValueError, match=error):
        scorer.score_batch(rows.head(3), probabilities=given)


def test_collected_probabilities_are_aligned_by_account_and_complete() -> None:
    ids = pd.Series(["a", "b", "c"])
    got = pd.DataFrame({"account_id": ["c", "a", "b"], "p_churn": [0.3, 0.1, 0.2],
                        "p_expansion": [0.6, 0.4, 0.5]})  # fmt: skip
    out = align_by_account(ids, got, ["churn", "expansion"])
    assert out["churn"].tolist() == [0.1, 0.2, 0.3]
    assert out["expansion"].tolist() == [0.4, 0.5, 0.6]
    with pytest.raises(RuntimeError, match=r"2 probabilities for 3 accounts: 1 missing \(b\)"):
        align_by_account(ids, got[got["account_id"] != "b"], ["churn"])
    with pytest.raises(RuntimeError, match="4 probabilities for 3 accounts"):
        align_by_account(ids, pd.concat([got, got.head(1)]), ["churn"])


@pytest.mark.parametrize(
    ("master", "python", "inside"),
    [("local[2]", PYSPARK_DEFAULT_PYTHON, sys.executable),  # PySpark's default: the driver's
     ("local[2]", "/opt/py/bin/python", "/opt/py/bin/python"),  # PYSPARK_PYTHON set: kept
     ("spark://host:7077", PYSPARK_DEFAULT_PYTHON, PYSPARK_DEFAULT_PYTHON)],  # a cluster's own
)  # fmt: skip
def test_udf_workers_run_the_drivers_python_on_a_local_master(
    master: str, python: str, inside: str
) -> None:
    session = SimpleNamespace(sparkContext=SimpleNamespace(master=master, pythonExec=python))
    with worker_python(session):
        assert session.sparkContext.pythonExec == inside
    assert session.sparkContext.pythonExec == python


# ----- Spark ----------------------------------------------------------------------------------
@pytest.mark.parametrize("blank", [False, True], ids=["as-is", "missing-values"])
@pytest.mark.spark
@pytest.mark.slow
def test_spark_probabilities_equal_the_local_scorers(
    spark: SparkEngine, setup: ServingSetup, scoring: tuple[pd.DataFrame, Scorer], blank: bool
) -> None:
    rows, scorer = scoring
    rows = rows.sample(frac=1, random_state=7).reset_index(drop=True)  # joined back by id
    if blank:  # None / NaN in string and double columns, a categorical column absent
        rows.loc[rows.index[::3], list(BLANKED)] = None
        rows = rows.drop(columns=[DROPPED])
    assert model_uris(scorer.models) == {"churn": "models:/cshealth-churn/1",
                                         "expansion": "models:/cshealth-expansion/1"}  # fmt: skip
    with environ(setup.env()):
        got = spark_probabilities(spark.spark, rows, scorer.models)
    want = _given(scorer.score(rows))
    assert set(got) == set(PROBABILITIES) and len(rows) == len(setup.ids)
    for target in PROBABILITIES:
        np.testing.assert_allclose(got[target], want[target], rtol=1e-9, atol=0, err_msg=target)
        assert np.ptp(got[target]) > 0.05  # distinct accounts, not one value broadcast


@pytest.mark.spark
@pytest.mark.slow
def test_spark_probabilities_refuse_duplicate_accounts(
    spark: SparkEngine, scoring: tuple[pd.DataFrame, Scorer]
) -> None:
    rows, scorer = scoring
    with pytest.raises(ValueError, match="1 duplicate account ids"):
        spark_probabilities(spark.spark, pd.concat([rows, rows.head(1)]), scorer.models)


def _stored(store: ScoreStore, run_id: str) -> dict[str, dict[str, Any]]:
    return {s["account_id"]: s for s in store.run_scores(run_id)}


def assert_same_rows(local: dict[str, dict], spark: dict[str, dict]) -> None:
    """Same accounts; probabilities and health within 1e-9; bands and explanations equal."""
    assert sorted(spark) == sorted(local) and local
    for account, want in local.items():
        got = spark[account]
        for key in ("churn_probability", "expansion_probability", "health_score"):
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=0), (account, key)
        assert {k: got[k] for k in SAME} == {k: want[k] for k in SAME}, account


@pytest.mark.spark
@pytest.mark.slow
def test_score_latest_with_spark_probabilities_stores_the_local_rows(
    spark: SparkEngine, setup: ServingSetup, scoring: tuple[pd.DataFrame, Scorer],
    tmp_path: Path,
) -> None:  # fmt: skip
    _, scorer = scoring
    frame = SnapshotTable.read(setup.snapshots).frame
    asked: list[int] = []

    def on_spark(rows: pd.DataFrame) -> dict[str, np.ndarray]:
        asked.append(len(rows))
        return spark_probabilities(spark.spark, rows, scorer.models)

    stored = {}
    for name, probabilities in (("local", None), ("spark", on_spark)):
        store = ScoreStore(f"sqlite:///{tmp_path / name}.db")
        with environ(setup.env()):
            summary = score_latest(frame, scorer, store, dt.datetime(2026, 2, 1, 6),
                                   probabilities=probabilities)  # fmt: skip
        assert summary["accounts"] == len(setup.ids) and summary["as_of"] == setup.as_of
        stored[name] = _stored(store, summary["run_id"])
        store.close()
    assert asked == [len(setup.ids)]  # the newest snapshot's rows, once
    assert_same_rows(stored["local"], stored["spark"])


@pytest.mark.spark
@pytest.mark.slow
def test_cli_scores_on_spark_like_the_local_run(
    spark: SparkEngine, setup: ServingSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from cshealth.cli import main

    state = setup.copy_state(tmp_path / "state")
    store = ScoreStore(state.db_url)
    local = store.latest_run()  # the set-up's run, scored in-process by the same models
    for k, v in state.env().items():
        monkeypatch.setenv(k, v)
    import serving.spark_scoring as spark_scoring

    computed: list[dict[str, np.ndarray]] = []  # what Spark computed, by the CLI's call
    real = spark_scoring.spark_probabilities

    def recording(*args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        computed.append(real(*args, **kwargs))
        return computed[-1]

    monkeypatch.setattr(spark_scoring, "spark_probabilities", recording)
    argv = ["-q", "--params", str(state.params), "score", "--features", str(state.snapshots),
            "--engine", "spark"]  # fmt: skip
    assert main(argv) == 0
    assert len(computed) == 1 and len(computed[0]["churn"]) == len(setup.ids)
    out = capsys.readouterr().out
    assert f"scored {len(setup.ids)} accounts at as_of {setup.as_of}" in out, out
    assert "spark engine" in out, out
    run = store.latest_run()
    assert run["run_id"] != local["run_id"] and store.count_runs() == 2
    assert (run["churn_model_version"], run["expansion_model_version"]) == ("1", "1")
    assert_same_rows(_stored(store, local["run_id"]), _stored(store, run["run_id"]))
    store.close()
    # the CLI reused this session (CSHEALTH_SPARK_MASTER unused) and left it running
    assert spark.spark.range(3).count() == 3


@pytest.mark.slow
def test_score_on_spark_without_pyspark_is_one_clear_line(
    setup: ServingSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from cshealth.cli import main

    state = setup.copy_state(tmp_path / "state")
    for k, v in state.env().items():
        monkeypatch.setenv(k, v)
    for module in ("pyspark", "pyspark.sql"):  # as if the `spark` extra were not installed
        monkeypatch.setitem(sys.modules, module, None)
    argv = ["-q", "--params", str(state.params), "score", "--features", str(state.snapshots),
            "--engine", "spark"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the Spark engine is not available") and err.count("\n") == 1
    assert "pip install 'cshealth[spark]'" in err
    store = ScoreStore(state.db_url)
    assert store.count_runs() == 1  # nothing written
    store.close()
