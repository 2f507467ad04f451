"""One settings object: every environment variable read in `cshealth/settings.py`, documented."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from cshealth.errors import UserError
from cshealth.settings import ENV_NAMES, Settings, markdown_table

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("cshealth", "features", "training", "serving", "data_checks", "simulator")


def _env_reads(path: Path) -> list[str]:
    """`os.environ.get(...)`, `os.environ[...]` loads and `os.getenv(...)` in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            text = ast.unparse(f)
            if text in ("os.environ.get", "os.getenv", "environ.get"):
                found.append(f"{path.name}:{node.lineno}: {text}")
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) \
                and ast.unparse(node.value) == "os.environ":  # fmt: skip
            found.append(f"{path.name}:{node.lineno}: os.environ[...]")
    return found


def test_no_module_reads_the_environment_but_the_settings() -> None:
    reads = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            if path != REPO / "cshealth" / "settings.py":
                reads += _env_reads(path)
    assert reads == []


def test_readme_table_is_the_settings_class() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->",
                      readme, re.S)  # fmt: skip
    assert block is not None, "README lost its settings table markers"
    assert block.group(1) == markdown_table()
    for name in ENV_NAMES:
        assert f"`{name}`" in block.group(1)


def test_values_are_parsed_once_with_their_types() -> None:
    s = Settings.from_env({"CSHEALTH_UMASK": "022", "CSHEALTH_WORKERS": "2",
                           "CSHEALTH_MICROBATCH": "0", "CSHEALTH_API_KEY": " k ",
                           "CSHEALTH_DB_URL": "", "UNRELATED": "x"})  # fmt: skip
    assert (s.umask, s.workers, s.microbatch) == (0o022, 2, False)
    assert s.api_key is not None and s.api_key.get_secret_value() == "k"
    assert s.db_url is None  # empty = unset
    assert "k" not in repr(s.api_key)
    defaults = Settings.from_env({})
    assert (defaults.mlflow_uri, defaults.umask, defaults.workers) == ("sqlite:///mlflow.db",
                                                                      0o077, 1)  # fmt: skip


@pytest.mark.parametrize(("name", "value"), [
    ("CSHEALTH_UMASK", "9x"), ("CSHEALTH_UMASK", "1777"), ("CSHEALTH_WORKERS", "many"),
    ("CSHEALTH_WORKERS", "0"), ("CSHEALTH_DB_TIMEOUT", "soon"), ("CSHEALTH_API_KEY", "  "),
    ("CSHEALTH_LOAD_RETRY_S", "-1"), ("CSHEALTH_MICROBATCH", "maybe"),
])  # fmt: skip
def test_a_bad_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(UserError, match=f"^{name}: ") as err:
        Settings.from_env({name: value})
    assert "\n" not in str(err.value)


def test_the_process_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSHEALTH_MLFLOW_EXPERIMENT", "other")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/x.db")
    s = Settings.from_env()
    assert (s.mlflow_experiment, s.mlflow_uri) == ("other", "sqlite:////tmp/x.db")
    # an explicit mapping ignores the process environment
    assert Settings.from_env({}).mlflow_experiment == "cshealth"
