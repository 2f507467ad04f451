"""The registered model outside the project: its code, requirements, signature, card, data set.

The session's trained set-up (`serving_data.serving_setup`) registers both models as
champions v1. The end-to-end test installs only the champion's declared requirements
(its requirements.txt) into a fresh venv, offline, from `.cache/wheelhouse` (`make
wheelhouse`), and scores with `mlflow.pyfunc.load_model` there, where `training` is not
importable, then compares with the project's own scoring. The other tests read what the
training run logged.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.snapshots import SnapshotTable
from tests.serving_data import REPO, ServingSetup, environ, serving_setup
from training import pyfunc, tracking

pytestmark = pytest.mark.slow

log = logging.getLogger(__name__)

WHEELHOUSE = REPO / ".cache" / "wheelhouse"
CHAMPION_URI = "models:/cshealth-churn@champion"
#: project packages: none may be imported by the logged model beyond `pyfunc.CODE_FILES`
PROJECT = ("cshealth", "features", "training", "serving", "data_checks", "simulator")
#: feature values blanked in one row, and columns left out of a whole request
BLANKED = ("mrr_usd", "plan", "active_users_30d", "nps_last")
DROPPED = ("segment", "tickets_90d", "csat_mean_90d")

#: run by the fresh venv's python, in a folder outside the repository
SCRIPT = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    try:
        import training
        project = training.__file__
    except ImportError:
        project = None
    import mlflow.pyfunc
    import pandas as pd
    model = mlflow.pyfunc.load_model("models:/cshealth-churn@champion")
    loaded = time.perf_counter() - t0
    proba = {}
    for name in ("rows", "partial"):
        out = model.predict(pd.read_parquet(name + ".parquet"))
        proba[name] = out["probability"].tolist()
    modules = {m: getattr(sys.modules[m], "__file__", None) for m in sys.modules
               if m.split(".")[0] in %r}
    json.dump({"project": project, "load_s": loaded, "proba": proba, "modules": modules,
               "columns": list(out.columns)}, open("out.json", "w"))
""") % (PROJECT,)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> ServingSetup:
    return serving_setup(tmp_path_factory)


@pytest.fixture(scope="module")
def snaps(setup: ServingSetup) -> SnapshotTable:
    return SnapshotTable.read(setup.snapshots)


def _client(setup: ServingSetup):
    with environ({"MLFLOW_TRACKING_URI": setup.mlflow_uri}):
        return tracking.client()


def _requests(setup: ServingSetup, snaps: SnapshotTable) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Newest snapshot rows in the signature's types, the last with values blanked; and the
    same rows without the `DROPPED` columns."""
    with environ({"MLFLOW_TRACKING_URI": setup.mlflow_uri}):
        model = tracking.load_champion("churn")[0]
    frame = snaps.frame
    rows = pyfunc.model_input(model, frame[frame["as_of"] == frame["as_of"].max()].head(25))
    rows = rows.reset_index(drop=True)
    rows.loc[len(rows) - 1, list(BLANKED)] = None
    return rows, rows.drop(columns=list(DROPPED))


def _clean_env(setup: ServingSetup) -> dict[str, str]:
    """No PYTHONPATH, no active venv, no pip configuration, no user site; the registry."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PIP_")}
    return env | {"MLFLOW_TRACKING_URI": setup.mlflow_uri, "PIP_CONFIG_FILE": os.devnull,
                  "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1",
                  "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # fmt: skip


def _declared_requirements(setup: ServingSetup) -> list[str]:
    """The champion's requirements.txt, as logged."""
    import mlflow.pyfunc

    with environ({"MLFLOW_TRACKING_URI": setup.mlflow_uri}):
        tracking.client()
        path = mlflow.pyfunc.get_model_dependencies(CHAMPION_URI)
    return [x.strip() for x in Path(path).read_text().splitlines() if x.strip()]


def _fresh_venv(where: Path, requirements: Path, env: dict[str, str]) -> Path:
    """A venv holding only `requirements`, installed offline from the wheelhouse; its python."""
    if not (WHEELHOUSE / ".stamp").exists():
        pytest.fail(f"no wheelhouse at {WHEELHOUSE}: run `make wheelhouse` (it downloads the "
                    "model's declared requirements once, with network)")  # fmt: skip
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, env=env, timeout=300)
    python = where / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links",
         str(WHEELHOUSE), "-r", str(requirements)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"installing the model's requirements offline failed (a stale wheelhouse? "
                    f"run `make wheelhouse`):\n{done.stderr[-3000:]}")  # fmt: skip
    return python


def test_champion_scores_in_a_fresh_venv_without_the_project(
    setup: ServingSetup, snaps: SnapshotTable, tmp_path: Path
) -> None:
    t0 = time.perf_counter()
    declared = _declared_requirements(setup)
    assert declared == pyfunc.pip_requirements()
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(declared) + "\n")
    env = _clean_env(setup)
    python = _fresh_venv(tmp_path / "venv", requirements, env)
    t_venv = time.perf_counter() - t0

    rows, partial = _requests(setup, snaps)
    work = tmp_path / "work"  # outside the repository: nothing of it on sys.path
    work.mkdir()
    rows.to_parquet(work / "rows.parquet")
    partial.to_parquet(work / "partial.parquet")
    (work / "score.py").write_text(SCRIPT)
    done = subprocess.run([str(python), "score.py"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads((work / "out.json").read_text())
    log.info("portable model: venv + install %.1f s, load %.1f s, test %.1f s", t_venv,
             out["load_s"], time.perf_counter() - t0)  # fmt: skip

    assert out["project"] is None  # `import training` failed before loading the model
    assert out["columns"] == [pyfunc.OUTPUT_COLUMN]
    shipped = {str(Path(f).with_suffix("")).replace("/", ".").removesuffix(".__init__")
               for f in pyfunc.CODE_FILES}  # fmt: skip
    assert set(out["modules"]) <= shipped | {"pyfunc_entry"}, out["modules"]
    for name, file in out["modules"].items():
        assert file is None or not Path(file).is_relative_to(REPO), (name, file)

    with environ({"MLFLOW_TRACKING_URI": setup.mlflow_uri}):
        model = tracking.load_champion("churn")[0]
    assert rows.iloc[-1][list(BLANKED)].isna().all()
    np.testing.assert_allclose(out["proba"]["rows"], model.predict_proba(rows), rtol=0,
                               atol=1e-9)  # fmt: skip
    full = partial.reindex(columns=model.feature_names)  # the dropped columns: missing
    np.testing.assert_allclose(out["proba"]["partial"], model.predict_proba(full), rtol=0,
                               atol=1e-9)  # fmt: skip


# ----- what the run logged (no venv) ------------------------------------------------------------
def test_signature_makes_every_feature_optional(setup: ServingSetup) -> None:
    from mlflow.models import get_model_info

    with environ({"MLFLOW_TRACKING_URI": setup.mlflow_uri}):
        tracking.client()
        info = get_model_info(CHAMPION_URI)
        model = tracking.load_champion("churn")[0]
    inputs = info.signature.inputs.inputs
    assert [c.name for c in inputs] == model.feature_names
    assert not any(c.required for c in inputs)
    for col, f in zip(inputs, model.features, strict=True):
        assert col.type.name == ("string" if f.categorical else "double"), f.name
    assert [(c.name, c.type.name) for c in info.signature.outputs.inputs] == [
        (pyfunc.OUTPUT_COLUMN, "double")
    ]


def test_the_loaded_pyfunc_takes_absent_columns_as_missing(
    setup: ServingSetup, snaps: SnapshotTable
) -> None:
    import mlflow.pyfunc

    with environ({"MLFLOW_TRACKING_URI": setup.mlflow_uri}):
        tracking.client()
        loaded = mlflow.pyfunc.load_model(CHAMPION_URI)
        model = tracking.load_champion("churn")[0]
    for x in _requests(setup, snaps):  # values blanked in a row; columns left out
        got = loaded.predict(x)["probability"].to_numpy()
        want = model.predict_proba(x.reindex(columns=model.feature_names))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_model_card_travels_with_the_model_and_describes_it(
    setup: ServingSetup, snaps: SnapshotTable, tmp_path: Path
) -> None:
    import mlflow

    c = _client(setup)
    mv = c.get_model_version("cshealth-churn", "1")
    with environ({"MLFLOW_TRACKING_URI": setup.mlflow_uri}):
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri="models:/cshealth-churn/1", dst_path=str(tmp_path),
            tracking_uri=setup.mlflow_uri, registry_uri=setup.mlflow_uri,
        ))  # fmt: skip
        model = tracking.load_champion("churn")[0]
    card = (local / tracking.MODEL_CARD).read_text()
    assert mv.description == card
    model_id = mv.source.rsplit("/", 1)[-1]  # models:/<logged model id>
    assert c.get_logged_model(model_id).tags[tracking.NOTE_TAG] == card
    first, last = tracking.training_window(snaps, "churn")
    info = model.info
    assert last == info["trained_through_as_of"] and first < last
    assert f"Snapshots as of {first}..{last}" in card
    assert f"Labels observed up to {info['labels_up_to']}" in card
    assert "| roc_auc |" in card and "95 % interval" in card
    lo, hi = (round(x, 3) for x in _interval(c, mv.run_id, "roc_auc"))
    assert f"{lo:.3f}..{hi:.3f}" in card
    assert all(f.name in card for f in model.features)
    assert "## Intended use" in card and tracking.INTENDED_USE in card
    # the code shipped is exactly the modules the pyfunc imports
    shipped = {str(p.relative_to(local / "code")) for p in (local / "code").rglob("*.py")}
    assert shipped == set(pyfunc.CODE_FILES)


def _interval(c, run_id: str, metric: str) -> tuple[float, float]:
    m = c.get_run(run_id).data.metrics
    return m[f"churn.lightgbm.{metric}_lo"], m[f"churn.lightgbm.{metric}_hi"]


@pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer column")
def test_run_has_the_snapshot_table_as_dataset_input(
    setup: ServingSetup, snaps: SnapshotTable
) -> None:
    from mlflow.types.utils import _infer_schema

    c = _client(setup)
    run = c.get_run(c.get_model_version("cshealth-churn", "1").run_id)
    [ds] = [d for d in run.inputs.dataset_inputs if d.dataset.name == "snapshots"]
    assert {t.key: t.value for t in ds.tags}["mlflow.data.context"] == "training"
    assert ds.dataset.digest == tracking.file_sha256(setup.snapshots)[:36]
    assert json.loads(ds.dataset.source)["uri"] == str(setup.snapshots.resolve())
    assert json.loads(ds.dataset.profile)["num_rows"] == len(snaps.frame)
    schema = json.loads(ds.dataset.schema)["mlflow_colspec"]
    assert schema == _infer_schema(snaps.frame).to_dict()  # the sample: the whole table's


def test_schema_sample_keeps_one_missing_value_per_column() -> None:
    from mlflow.types.utils import _infer_schema

    n = 5000
    frame = pd.DataFrame({"a": np.arange(n, dtype=float), "b": ["x"] * n, "c": np.ones(n)})
    frame.loc[4000, "a"] = np.nan
    frame.loc[4500, "b"] = None
    sample = tracking._schema_sample(frame)
    assert len(sample) == tracking._SCHEMA_ROWS + 2
    assert _infer_schema(sample) == _infer_schema(frame)
    assert [c.required for c in _infer_schema(sample).inputs] == [False, False, True]


def _project_imports(path: Path) -> set[str]:
    """Module-level imports of project modules in `path` (not in functions or TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n for n in names if n.split(".")[0] in PROJECT}
    return out


def _module_file(name: str) -> str:
    """The repository file of the module `name` names (`training.model.HealthModel`: a name
    inside training/model.py)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        stem = "/".join(parts[:i])
        for rel in (f"{stem}.py", f"{stem}/__init__.py"):
            if (REPO / rel).exists():
                return rel
    raise AssertionError(f"{name} is no module of the repository")


def test_shipped_code_holds_every_project_module_it_imports() -> None:
    shipped = set(pyfunc.CODE_FILES)
    for rel in [*pyfunc.CODE_FILES, "training/pyfunc_entry.py"]:
        for name in _project_imports(REPO / rel):
            assert _module_file(name) in shipped, f"{rel} imports {name}: add it to CODE_FILES"
