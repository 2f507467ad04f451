"""The CLI's own hygiene: private files by default, one-line errors without secrets."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cshealth.cli import main
from cshealth.errors import UserError, one_line, redact

CSHEALTH = str(Path(sys.executable).with_name("cshealth"))


def _generate(tmp_path: Path, env_extra: dict[str, str]) -> Path:
    """Run `cshealth generate` in a child whose inherited umask is the usual 022."""
    out = tmp_path / "raw"
    env = {k: v for k, v in os.environ.items() if k != "CSHEALTH_UMASK"} | env_extra
    cmd = [CSHEALTH, "generate", "--out", str(out), "--truth", str(tmp_path / "truth.parquet"),
           "--accounts", "8", "--months", "3", "--truth-samples", "2"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: os.umask(0o022))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_created_files_are_private_by_default(tmp_path: Path) -> None:
    out = _generate(tmp_path, {})
    files = [*out.glob("*.parquet"), tmp_path / "truth.parquet"]
    assert files and {_mode(p) for p in files} == {0o600}
    assert _mode(out) == 0o700


def test_umask_setting_restores_shared_modes(tmp_path: Path) -> None:
    out = _generate(tmp_path, {"CSHEALTH_UMASK": "022"})
    assert {_mode(p) for p in out.glob("*.parquet")} == {0o644}
    assert _mode(out) == 0o755


@pytest.mark.parametrize("value", ["abc", "1777", "-1"])
def test_bad_umask_setting_is_one_line(value: str, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CSHEALTH_UMASK", value)
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CSHEALTH_UMASK" in err


def test_main_leaves_the_callers_umask_alone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CSHEALTH_UMASK", raising=False)
    before = os.umask(0o022)
    try:
        main(["check", str(tmp_path / "absent"), "--reports", str(tmp_path / "r")])
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(before)


def test_redact_hides_passwords_tokens_and_secret_parameters() -> None:
    text = ("postgresql://bob:pa@ss@db:5432/x http://u:p2@h/path Bearer abc.def "
            "https://h/?token=zz&a=1 sqlite:///plain.db")  # fmt: skip
    out = redact(text)
    for secret in ("pa@ss", "p2@", "abc.def", "zz"):
        assert secret not in out
    assert "bob:***@db:5432/x" in out and "u:***@h/path" in out and "a=1" in out
    assert "sqlite:///plain.db" in out


def test_one_line_escapes_control_characters() -> None:
    out = one_line("a\nforged INFO line\r\x1b[31mred\u2028é")
    assert "\n" not in out and "\r" not in out and "\x1b" not in out and "\u2028" not in out
    assert "\\n" in out and "\\x1b" in out and "é" in out


def test_user_error_message_is_redacted() -> None:
    assert "s3cret" not in str(UserError("cannot reach http://a:s3cret@127.0.0.1:1"))


def test_cli_error_lines_cannot_be_forged(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "x\nerror: all good\x1b[2K"
    code = main(["features", "--data", str(folder), "--out", str(tmp_path / "s.parquet")])
    err = capsys.readouterr().err
    assert code == 1
    assert "data folder does not exist" in err and "\x1b" not in err
    assert not any(line.startswith("error: all good") for line in err.splitlines())
