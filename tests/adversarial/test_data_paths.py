"""Hostile data-folder names: a path is data, never SQL, never a glob pattern.

The same data set is copied into folders with names that once broke out of the DuckDB
SQL the usage family built by pasting the path in. `check` and `features` must treat
each folder exactly like a plainly named one: exit 0, the same snapshot table, and no
file written anywhere but the output.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cshealth.cli import main
from features.contract import T

HOSTILE = {
    "copy": "e'); COPY (SELECT 42) TO 'x.csv'; --",
    "where": "d') WHERE 1=0 --",
    "apostrophe": "o'brien",
    "spaces_unicode": "l'équipe données ünïcødé 数据",
    "glob": "raw[1]*?",
}


def _params(root: Path) -> Path:
    params = root / "params.yaml"
    params.write_text(f"checks:\n  snapshot_report: {root / 'reports' / 'snap.json'}\n")
    return params


def _features(root: Path, data: str, out: Path) -> int:
    params = str(_params(root))
    return main(["--params", params, "-q", "features", "--data", data, "--out", str(out)])


def _check(root: Path, data: str) -> int:
    return main(["--params", str(_params(root)), "-q", "check", data, "--reports",
                 str(root / "reports" / "checks")])  # fmt: skip


@pytest.fixture(scope="module")
def baseline(generated_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The snapshot table built from a plainly named copy."""
    root = tmp_path_factory.mktemp("plain")
    shutil.copytree(generated_dir, root / "raw")
    out = root / "out" / "snapshots.parquet"
    assert _features(root, str(root / "raw"), out) == 0
    return pd.read_parquet(out)


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_folder_names_are_plain_paths(
    name: str, generated_dir: Path, baseline: pd.DataFrame, tmp_path: Path, monkeypatch, capsys
) -> None:
    shutil.copytree(generated_dir, tmp_path / name)
    if "[" in name:
        # A folder the name would match as a glob pattern: it must not be read instead.
        decoy = tmp_path / "raw1xy"
        shutil.copytree(generated_dir, decoy)
        events = pd.read_parquet(decoy / f"{T.USAGE_EVENTS}.parquet")
        events.iloc[:10].to_parquet(decoy / f"{T.USAGE_EVENTS}.parquet", index=False)
    monkeypatch.chdir(tmp_path)  # where injected SQL would write `x.csv`
    _params(tmp_path)
    before = _listing(tmp_path)
    out = tmp_path / "out" / "snapshots.parquet"
    assert _check(tmp_path, name) == 0, capsys.readouterr().err
    assert _features(tmp_path, name, out) == 0, capsys.readouterr().err
    pd.testing.assert_frame_equal(pd.read_parquet(out), baseline)
    written = _listing(tmp_path) - before
    assert not any(p.endswith(".csv") for p in written), written
    assert all(p.startswith(("out", "reports")) for p in written), written


def test_hostile_name_in_a_real_process(generated_dir: Path, tmp_path: Path) -> None:
    """The console command itself: exit 0, no traceback, nothing written beside the data."""
    name = HOSTILE["copy"]
    shutil.copytree(generated_dir, tmp_path / name)
    params = _params(tmp_path)
    exe = Path(sys.executable).with_name("cshealth")
    cmd = [str(exe), "--params", str(params), "-q", "features", "--data", name,
           "--out", str(tmp_path / "out" / "s.parquet")]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x.csv").exists()
    assert (tmp_path / "out" / "s.parquet").exists()
