"""`bentoml build` of the project and the built Bento served over HTTP (README "Deploy").

Builds with pyproject's ``[tool.bentoml.build]`` into a private BENTOML_HOME and checks the
Bento: the service's packages and params.yaml as source, no tests, data, registry or store,
the requirements taken from ``[project].dependencies`` and not locked (no network). Then
runs ``bentoml serve <tag>`` outside the repository over the session's trained set-up
(`tests/serving_data.py`) and checks /readyz, /score with and without the key, and that
the worker runs the Bento's code: its cwd is the Bento's src folder, and a sitecustomize
hides the editable install of the project, so a module missing from the Bento fails the
start instead of being imported from the repository. Prints the build and cold-start times
(``pytest -s``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.http_server import KEY, Server, kill_tree
from tests.serving_data import REPO, ServingSetup, serving_setup

pytestmark = pytest.mark.slow

BENTOML = Path(sys.executable).with_name("bentoml")
BUILD_TIMEOUT_S = 300
#: the project's packages the service imports: shipped as source in the Bento
PACKAGES = ("serving", "features", "training", "cshealth", "simulator")
#: nothing under these folders, nor with these suffixes, belongs in the Bento
FORBIDDEN_DIRS = ("tests", "data", "reports", "benchmarks", "mlruns", "mlartifacts", ".venv",
                  ".dvc", "models")  # fmt: skip
FORBIDDEN_SUFFIXES = (".db", ".parquet", ".pkl", ".joblib", ".pyc")
QUIET = {"DO_NOT_TRACK": "true", "BENTOML_DO_NOT_TRACK": "true", "PYTHONUNBUFFERED": "1"}
#: the served processes must not see the project's editable install (see the module doc)
SITECUSTOMIZE = """\
import sys

def _repo(obj):
    return "__editable__" in str(getattr(obj, "__module__", ""))

sys.meta_path[:] = [f for f in sys.meta_path if not _repo(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not _repo(h)]
"""


@dataclass
class Bento:
    tag: str
    path: Path
    home: Path  # its BENTOML_HOME
    build_s: float

    @property
    def src(self) -> Path:
        return self.path / "src"


@dataclass
class Served:
    bento: Bento
    server: Server
    setup: ServingSetup
    isolated_env: dict[str, str]


def _bentoml(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BENTOML), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=BUILD_TIMEOUT_S, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> Bento:
    """`bentoml build` from the repository root into a fresh BENTOML_HOME."""
    home = tmp_path_factory.mktemp("bentoml_home")
    # CSHEALTH_API_KEY: the build imports the service, which may check the key at import
    env = {**os.environ, **QUIET, "BENTOML_HOME": str(home), "CSHEALTH_API_KEY": KEY}
    t0 = time.monotonic()
    built = _bentoml(["build", "-o", "tag"], env, REPO)
    build_s = time.monotonic() - t0
    assert built.returncode == 0, f"bentoml build failed:\n{built.stdout}\n{built.stderr[-4000:]}"
    log = built.stdout + built.stderr
    assert "installing it with" not in log, "bentoml build installed uv (network): see pyproject"
    assert "Locking PyPI" not in log, "bentoml build locked packages (network)"
    tag = next(ln.removeprefix("__tag__:") for ln in built.stdout.splitlines()
               if ln.startswith("__tag__:"))  # fmt: skip
    where = _bentoml(["get", tag, "-o", "path"], env, REPO)
    assert where.returncode == 0, where.stderr
    path = Path(where.stdout.strip().splitlines()[-1])
    print(f"\nbentoml build: {build_s:.1f} s, {tag}, {_size_kib(path):.0f} KiB")
    return Bento(tag, path, home, build_s)


def _size_kib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1024


def _files(root: Path) -> set[str]:
    return {f.relative_to(root).as_posix() for f in root.rglob("*") if f.is_file()}


def test_bento_holds_the_service_packages_and_params(bento: Bento) -> None:
    files = _files(bento.src)
    for pkg in PACKAGES:
        expected = {f"{pkg}/{f.name}" for f in (REPO / pkg).glob("*.py")}
        assert expected and expected <= files, f"{pkg}: missing {sorted(expected - files)}"
    assert "params.yaml" in files
    assert "serving/service.py" in files
    templates = {f"cshealth/templates/{f.name}" for f in (REPO / "cshealth/templates").iterdir()}
    assert templates <= files


def test_bento_holds_no_tests_data_or_state(bento: Bento) -> None:
    files = _files(bento.src)
    top = {f.split("/", 1)[0] for f in files if "/" in f}
    assert not top & set(FORBIDDEN_DIRS), sorted(top & set(FORBIDDEN_DIRS))
    assert not [f for f in files if f.endswith(FORBIDDEN_SUFFIXES)]
    assert not [f for f in files if "__pycache__" in f]
    assert top <= {*PACKAGES}, f"unexpected folders in the Bento: {sorted(top - set(PACKAGES))}"


def test_bento_requirements_come_from_pyproject_unlocked(bento: Bento) -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    py = bento.path / "env" / "python"
    lines = [ln.strip() for ln in (py / "requirements.txt").read_text().splitlines()]
    assert set(deps) <= set(lines), sorted(set(deps) - set(lines))
    assert not (py / "requirements.lock.txt").exists()
    assert not [ln for ln in lines if "==" in ln and not ln.startswith("bentoml==")], lines


@pytest.fixture(scope="module")
def served(bento: Bento, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`bentoml serve <tag>` from a folder outside the repository, the repo not importable."""
    setup = serving_setup(tmp_path_factory).copy_state(tmp_path_factory.mktemp("bento_state"))
    root = tmp_path_factory.mktemp("bento_serve")
    isolate = root / "isolate"
    isolate.mkdir()
    (isolate / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (root / "prom").mkdir()
    env = {**os.environ, **QUIET, **setup.env(), "CSHEALTH_API_KEY": KEY,
           "BENTOML_HOME": str(bento.home), "PROMETHEUS_MULTIPROC_DIR": str(root / "prom"),
           "PYTHONPATH": str(isolate), "CSHEALTH_LOAD_RETRY_S": "1"}  # fmt: skip
    env.pop("CSHEALTH_NO_AUTH", None)
    server = Server(env, root / "server.log", target=bento.tag, cwd=root)
    try:
        server.start()
        print(f"\nbentoml serve {bento.tag}: ready in {server.startup_s:.1f} s")
        yield Served(bento, server, setup, env)
    finally:
        pids = _tree(server.proc.pid) if server.proc is not None else []
        server.stop()
        for pid in pids:
            kill_tree(pid)


def _tree(pid: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        return [pid, *(p.pid for p in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def test_served_bento_scores_with_the_key(served: Served) -> None:
    ready = httpx.get(f"{served.server.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    ids = served.setup.ids[:3]
    res = served.server.post("/score", {"account_ids": ids})
    assert res.status_code == 200, res.text
    body = res.json()
    assert sorted(r["account_id"] for r in body["results"]) == sorted(ids)
    assert not body["errors"]


def test_served_bento_refuses_without_the_key(served: Served) -> None:
    res = served.server.post("/score", {"account_ids": served.setup.ids[:1]}, headers=None)
    assert res.status_code == 401, res.text


def test_served_code_is_the_bentos(served: Served) -> None:
    assert served.server.proc is not None
    workers = [p for p in psutil.Process(served.server.proc.pid).children(recursive=True)
               if "_bentoml_impl.worker.service" in " ".join(p.cmdline())]  # fmt: skip
    assert workers, "no BentoML worker process found"
    for w in workers:
        assert Path(w.cwd()).resolve() == served.bento.src.resolve()
        assert served.bento.tag in w.cmdline()
    # the sitecustomize works: outside the Bento, the project cannot be imported
    probe = subprocess.run([sys.executable, "-c", "import serving"], cwd=served.bento.home,
                           env=served.isolated_env, capture_output=True, text=True,
                           timeout=60, check=False)  # fmt: skip
    assert probe.returncode != 0 and "No module named 'serving'" in probe.stderr, probe.stderr
