"""Bad data must stop both `cshealth check` and `cshealth features`, named, in one clear line.

Every case corrupts a private copy of the generated data set. `features` must catch it on
its own (it may run without `check`): exit 1, the table and column (or file) named on
stderr, no traceback, nothing written.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cshealth.cli import main
from cshealth.report import _bars, money, pct
from features.contract import MAX_ID_LENGTH, TABLES, Col, T

RUN_DATE = "2024-06-01"  # the generated data end on 2024-01-01
Corruption = Callable[[Path], None]


# -- corruptions ---------------------------------------------------------------------------


def _path(data: Path, name: str) -> Path:
    return data / f"{name}.parquet"


def edit(name: str, change: Callable[[pd.DataFrame], pd.DataFrame | None]) -> Corruption:
    """Apply `change` to table `name` (ids as plain strings) and write it back as Parquet."""

    def corrupt(data: Path) -> None:
        df = pd.read_parquet(_path(data, name))
        categories = [c for c in df.columns if isinstance(df[c].dtype, pd.CategoricalDtype)]
        df = df.astype(dict.fromkeys(categories, "str"))
        out = change(df)
        (df if out is None else out).to_parquet(_path(data, name), index=False)

    return corrupt


def set_first(name: str, column: str, value: object, rows: int = 1) -> Corruption:
    def change(df: pd.DataFrame) -> None:
        df.loc[df.index[:rows], column] = value

    return edit(name, change)


def rename_account(new_id: str) -> Corruption:
    """Give the first account a new id in every table (so only the id's form is wrong)."""

    def corrupt(data: Path) -> None:
        old = pd.read_parquet(_path(data, T.ACCOUNTS))[Col.ACCOUNT_ID].iloc[0]
        for name, table in TABLES.items():
            if Col.ACCOUNT_ID in table.column_names:
                edit(name, lambda df: df.replace({Col.ACCOUNT_ID: {old: new_id}}))(data)

    return corrupt


def as_csv(name: str, mrr_text: str) -> Corruption:
    def corrupt(data: Path) -> None:
        df = pd.read_parquet(_path(data, name)).astype({Col.MRR: "str"})
        df.loc[df.index[0], Col.MRR] = mrr_text
        _path(data, name).unlink()
        df.to_csv(data / f"{name}.csv", index=False)

    return corrupt


def write_bytes(file: str, content: Callable[[bytes], bytes]) -> Corruption:
    """Replace `file` (relative to the data folder) by `content(its bytes)`."""

    def corrupt(data: Path) -> None:
        path = data / file
        path.write_bytes(content(path.read_bytes()))

    return corrupt


def csv_bytes(name: str, content: Callable[[bytes], bytes]) -> Corruption:
    """Turn table `name` into a CSV, then replace its bytes."""

    def corrupt(data: Path) -> None:
        df = pd.read_parquet(_path(data, name))
        _path(data, name).unlink()
        df.to_csv(data / f"{name}.csv", index=False)
        write_bytes(f"{name}.csv", content)(data)

    return corrupt


def parts(name: str, bad: Callable[[bytes], bytes]) -> Corruption:
    """Split table `name` into a folder of three Parquet parts and spoil the second."""

    def corrupt(data: Path) -> None:
        df = pd.read_parquet(_path(data, name))
        _path(data, name).unlink()
        (data / name).mkdir()
        for i, chunk in enumerate(np.array_split(np.arange(len(df)), 3)):
            df.iloc[chunk].to_parquet(data / name / f"part-{i}.parquet", index=False)
        write_bytes(f"{name}/part-1.parquet", bad)(data)

    return corrupt


def duplicate(name: str, column: str) -> Corruption:
    def change(df: pd.DataFrame) -> None:
        df.loc[df.index[1], column] = df.loc[df.index[0], column]

    return edit(name, change)


def truncate(b: bytes) -> bytes:
    return b[: len(b) // 2]


def nothing(b: bytes) -> bytes:
    return b""


def garbage(b: bytes) -> bytes:
    return b"PAR1" + bytes(range(256)) * 4 + b"PAR1"


def latin1(b: bytes) -> bytes:
    return b.replace(b"\n", "\nÉté".encode("latin-1"), 1)


# -- running both stages -------------------------------------------------------------------


def _stage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def run_both(
    data: Path, root: Path, capsys: pytest.CaptureFixture[str], run_date: bool = True
) -> dict[str, tuple[int, str]]:
    """Exit code and stderr of `check` and `features` on `data`; asserts nothing is written."""
    params = root / "params.yaml"
    params.write_text(f"checks:\n  snapshot_report: {root / 'snap' / 'report.json'}\n")
    dated = ["--run-date", RUN_DATE] if run_date else []
    out = root / "features" / "snapshots.parquet"
    common = ["--params", str(params), "-q"]
    check = [*common, "check", str(data), "--reports", str(root / "checks"), *dated]
    features = [*common, "features", "--data", str(data), "--out", str(out), *dated]
    result = {"check": _stage(check, capsys), "features": _stage(features, capsys)}
    assert not out.exists() and not (root / "snap").exists(), "features wrote despite bad data"
    return result


def assert_stopped(result: dict[str, tuple[int, str]], *named: str) -> None:
    for stage, (code, err) in result.items():
        assert code == 1, f"{stage} exited {code}: {err}"
        assert "Traceback" not in err, f"{stage}: {err}"
        for text in named:
            assert text in err, f"{stage} does not name {text!r}: {err}"


@pytest.fixture
def data(generated_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(generated_dir, tmp_path / "raw"))


BAD_VALUES: dict[str, tuple[Corruption, tuple[str, ...]]] = {
    # (a) no usage at all: every account would silently get zero usage
    "empty_usage_events": (edit(T.USAGE_EVENTS, lambda df: df.iloc[:0]), (T.USAGE_EVENTS, "empty")),
    # (b) non-finite numbers, from Parquet and from CSV text
    "inf_mrr": (set_first(T.SUBSCRIPTIONS, Col.MRR, np.inf), (T.SUBSCRIPTIONS, Col.MRR, "finite")),
    "mrr_1e400_csv": (as_csv(T.SUBSCRIPTIONS, "1e400"), (T.SUBSCRIPTIONS, Col.MRR, "finite")),
    "inf_quantity": (set_first(T.USAGE_EVENTS, Col.QUANTITY, np.inf),
                     (T.USAGE_EVENTS, Col.QUANTITY, "finite")),
    "minus_inf_kpi": (set_first(T.OUTCOME_MEASUREMENTS, Col.VALUE, -np.inf),
                      (T.OUTCOME_MEASUREMENTS, Col.VALUE, "finite")),
    # (c) ids the score store cannot hold, or that rewrite a terminal
    "long_account_id": (rename_account("a" * (MAX_ID_LENGTH + 1)),
                        (T.ACCOUNTS, Col.ACCOUNT_ID, str(MAX_ID_LENGTH))),
    "long_user_id": (set_first(T.USAGE_EVENTS, Col.USER_ID, "u" * 300),
                     (T.USAGE_EVENTS, Col.USER_ID, str(MAX_ID_LENGTH))),
    "escape_in_account_id": (rename_account("acct\x1b[2J"),
                             (T.ACCOUNTS, Col.ACCOUNT_ID, "control")),
    "escape_in_user_id": (set_first(T.USAGE_EVENTS, Col.USER_ID, "u\x1b[31mred"),
                          (T.USAGE_EVENTS, Col.USER_ID, "control")),
    "newline_in_ticket_id": (set_first(T.SUPPORT_TICKETS, Col.TICKET_ID, "T-1\nT-2"),
                             (T.SUPPORT_TICKETS, Col.TICKET_ID, "control")),
    # (d) records after the run date
    "events_in_2030": (set_first(T.USAGE_EVENTS, Col.EVENT_TIME, pd.Timestamp("2030-01-01"), 5),
                       (T.USAGE_EVENTS, Col.EVENT_TIME, "run date")),
    "ticket_in_2030": (set_first(T.SUPPORT_TICKETS, Col.CREATED_AT, pd.Timestamp("2030-01-01")),
                       (T.SUPPORT_TICKETS, Col.CREATED_AT, "run date")),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_values_stop_check_and_features(
    case: tuple[Corruption, tuple[str, ...]], data: Path, tmp_path: Path, capsys
) -> None:
    corrupt, named = case
    corrupt(data)
    assert_stopped(run_both(data, tmp_path, capsys), *named)


def test_features_rejects_future_events_with_its_default_run_date(
    data: Path, tmp_path: Path, capsys
) -> None:
    """Without --run-date, features bounds timestamps by today: 2200 is always later."""
    set_first(T.USAGE_EVENTS, Col.EVENT_TIME, pd.Timestamp("2200-01-01"), 5)(data)
    result = run_both(data, tmp_path, capsys, run_date=False)
    code, err = result["features"]
    assert code == 1 and "Traceback" not in err
    assert T.USAGE_EVENTS in err and Col.EVENT_TIME in err and "run date" in err


def test_features_run_date_must_be_a_date(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["features", "--run-date", "soon"])
    assert stop.value.code == 2 and "YYYY-MM-DD" in capsys.readouterr().err


BAD_FILES: dict[str, tuple[Corruption, tuple[str, ...]]] = {
    "truncated_parquet": (write_bytes(f"{T.USAGE_EVENTS}.parquet", truncate),
                          (f"{T.USAGE_EVENTS}.parquet",)),
    "empty_parquet": (write_bytes(f"{T.ACCOUNTS}.parquet", nothing), (f"{T.ACCOUNTS}.parquet",)),
    "corrupt_parquet": (write_bytes(f"{T.SUBSCRIPTIONS}.parquet", garbage),
                        (f"{T.SUBSCRIPTIONS}.parquet",)),
    "truncated_usage_part": (parts(T.USAGE_EVENTS, truncate), ("part-1.parquet", T.USAGE_EVENTS)),
    "empty_usage_part": (parts(T.USAGE_EVENTS, nothing), ("part-1.parquet", T.USAGE_EVENTS)),
    "corrupt_ticket_part": (parts(T.SUPPORT_TICKETS, garbage),
                            ("part-1.parquet", T.SUPPORT_TICKETS)),
    "latin1_csv": (csv_bytes(T.NPS_RESPONSES, latin1), (f"{T.NPS_RESPONSES}.csv", "UTF-8")),
    "latin1_usage_csv": (csv_bytes(T.USAGE_EVENTS, latin1), (f"{T.USAGE_EVENTS}.csv", "UTF-8")),
    "empty_csv": (csv_bytes(T.OUTCOMES, nothing), (f"{T.OUTCOMES}.csv", "empty")),
    "empty_usage_csv": (csv_bytes(T.USAGE_EVENTS, nothing), (f"{T.USAGE_EVENTS}.csv", "empty")),
    "duplicate_account_id": (duplicate(T.ACCOUNTS, Col.ACCOUNT_ID),
                             (T.ACCOUNTS, Col.ACCOUNT_ID, "unique")),
    "duplicate_ticket_id": (duplicate(T.SUPPORT_TICKETS, Col.TICKET_ID),
                            (T.SUPPORT_TICKETS, Col.TICKET_ID, "unique")),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_files_are_one_clear_error(
    case: tuple[Corruption, tuple[str, ...]], data: Path, tmp_path: Path, capsys
) -> None:
    corrupt, named = case
    corrupt(data)
    assert_stopped(run_both(data, tmp_path, capsys), *named)


def test_corrupt_part_in_a_real_process(data: Path, tmp_path: Path) -> None:
    """The console command prints one line per problem and no traceback."""
    parts(T.USAGE_EVENTS, truncate)(data)
    exe = Path(sys.executable).with_name("cshealth")
    out = tmp_path / "s.parquet"
    cmd = [str(exe), "-q", "features", "--data", str(data), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "part-1.parquet" in done.stderr
    assert not out.exists()


# -- the report never shows inf or NaN ------------------------------------------------------


def test_report_formatting_never_renders_non_finite_numbers() -> None:
    for x in (np.inf, -np.inf, np.nan):
        assert money(x) == "–" and pct(x) == "–"
    svg = _bars(["a", "b", "c"], [np.inf, 5.0, np.nan])
    assert "nan" not in svg.lower() and "inf" not in svg.lower()
    assert 'width="380.0"' in svg  # the finite value is the longest bar
