"""Data where it lives: data folders given as URIs, partitioned folders, other filesystems.

Fast and offline: `file://` URIs against plain paths, a hive-partitioned events folder
with the files every writer leaves beside its parts, and an fsspec in-memory filesystem
standing in for an object store (Arrow reads it as it reads S3 or GCS).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import features_data as hb
import fsspec
import pandas as pd
import pyarrow.fs as pafs
import pytest

from cshealth.cli import main
from data_checks import CheckReport, check_folder
from data_checks.events import open_events
from features.contract import Col, T
from features.engine import DuckDBEngine
from features.io import ContractError, load_folder, source_files
from features.location import DataLocation, LocationError, locate
from features.pipeline import _load, build_snapshots
from features.snapshots import SnapshotTable
from features.usage import usage_features

RUN_DATE = dt.date(2024, 7, 1)


@pytest.fixture
def memory() -> Iterator[tuple[fsspec.AbstractFileSystem, str]]:
    """fsspec's in-memory filesystem (one store per process) and a private root in it."""
    fs = fsspec.filesystem("memory")
    root = f"/cshealth-{uuid.uuid4().hex}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def remote(fs: fsspec.AbstractFileSystem, folder: str) -> DataLocation:
    """`folder` in the in-memory store as Arrow sees a remote filesystem."""
    arrow = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    return locate(f"memory://{folder}", filesystem=arrow)


def untimed(value: object) -> object:
    """Check results without the times they were taken at (`seconds`, GX's load times)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in ("seconds", "ge_load_time")}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def check_results(report: CheckReport) -> object:
    """A check report's results without the timing."""
    return untimed(report.results)


# -- (a) file:// URIs and plain paths ------------------------------------------------------


def test_file_uri_reads_as_the_plain_path(tmp_path: Path) -> None:
    data = hb.write(hb.tables(), tmp_path / "raw data")  # a space: the URI percent-encodes it
    uri = data.as_uri()
    assert "%20" in uri
    where = locate(uri)
    assert where.local_path == data and where == locate(data) == locate(str(data))
    assert where.spark_uri == f"file://{data}"  # Hadoop takes the path literally
    assert os.fspath(where) == str(data)

    path_snaps = build_snapshots(data, hb.PARAMS)
    uri_snaps = build_snapshots(where, hb.PARAMS)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(uri_snaps.frame, path_snaps.frame)
    assert uri_snaps.metadata() == path_snaps.metadata()

    by_path = check_folder(data, RUN_DATE)
    by_uri = check_folder(where, RUN_DATE)  # type: ignore[arg-type]
    assert by_path.success and by_uri.success
    assert by_uri.tables_checked == by_path.tables_checked
    assert by_uri.expectations_run == by_path.expectations_run
    assert check_results(by_uri) == check_results(by_path)


def test_cli_takes_file_uris(generated_dir: Path, tmp_path: Path, capsys) -> None:
    summaries = []
    for n, data in enumerate((str(generated_dir), generated_dir.as_uri())):
        reports = tmp_path / f"checks{n}"
        assert main(["check", data, "--reports", str(reports)]) == 0
        assert capsys.readouterr().out.startswith("OK")
        summary = json.loads((reports / "summary.json").read_text())
        summaries.append({k: v for k, v in summary.items() if k != "summary"})  # has seconds
    assert summaries[0] == summaries[1]

    params = tmp_path / "params.yaml"
    params.write_text(f"checks:\n  snapshot_report: {tmp_path / 'snap.json'}\n")
    tables = []
    for n, data in enumerate((str(generated_dir), generated_dir.as_uri())):
        out = tmp_path / f"snapshots{n}.parquet"
        assert main(["--params", str(params), "features", "--data", data, "--out", str(out)]) == 0
        tables.append(SnapshotTable.read(out))
    pd.testing.assert_frame_equal(tables[1].frame, tables[0].frame)
    assert tables[1].metadata() == tables[0].metadata()


# -- (b) partitioned folders: exactly the visible parts ------------------------------------

#: what writers leave beside the parts: every one would add rows, or fail, if it were read
HIDDEN = ("_SUCCESS", "year=2024/.part-0.parquet.crc", "year=2024/_part-9.parquet",
          "year=2024/.part-8.parquet", "_temporary/0/part-0.parquet", ".hidden/part-0.parquet",
          "year=2024/_staging/month=01/part-0.parquet")  # fmt: skip


def partitioned(events: pd.DataFrame, folder: Path) -> list[str]:
    """Write `events` as a hive-partitioned folder (year=/month=) with hidden extras; the
    visible parts, relative to the folder."""
    visible = []
    month = events[Col.EVENT_TIME].dt.strftime("%m")
    for m, part in events.groupby(month):
        name = f"year=2024/month={m}/part-0.parquet"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        part.to_parquet(folder / name, index=False)
        visible.append(name)
    for name in HIDDEN:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".parquet"):  # valid parts: read, they would double the events
            events.to_parquet(folder / name, index=False)
        elif name.endswith(".crc"):
            (folder / name).write_bytes(b"\x00crc")
        else:
            (folder / name).touch()  # 0 bytes: read, it would be "an empty file"
    return sorted(visible)


def test_partitioned_folder_reads_exactly_the_visible_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memory: tuple[fsspec.AbstractFileSystem, str]
) -> None:
    frames = hb.tables()
    events = frames.pop(T.USAGE_EVENTS)
    data = hb.write(frames, tmp_path / "parts")
    visible = partitioned(events, data / T.USAGE_EVENTS)
    assert len(visible) > 3
    flat = hb.write(hb.tables(), tmp_path / "flat")

    def no_walk(*args: object, **kwargs: object) -> None:
        raise AssertionError("the parts are listed by Arrow, not walked in Python")

    monkeypatch.setattr(Path, "rglob", no_walk)
    monkeypatch.setattr(os, "walk", no_walk)
    folder = data / T.USAGE_EVENTS
    parts = source_files(T.USAGE_EVENTS, folder)
    assert [str(Path(p).relative_to(folder)) for p in parts] == visible

    ev = open_events(data)
    assert ev is not None
    try:
        assert ev.rows == len(events) and ev.issues == []
        assert ev.con.sql("SELECT count(*) FROM events").fetchall()[0][0] == len(events)
    finally:
        ev.close()
    pd.testing.assert_frame_equal(
        build_snapshots(data, hb.PARAMS).frame, build_snapshots(flat, hb.PARAMS).frame
    )

    # The same folder in another filesystem: the same parts, the same rows.
    fs, root = memory
    fs.put(str(data), f"{root}/parts", recursive=True)
    where = remote(fs, f"{root}/parts")
    got = source_files(T.USAGE_EVENTS, where.child(T.USAGE_EVENTS))
    assert all(isinstance(p, DataLocation) for p in got)
    base = where.child(T.USAGE_EVENTS)
    assert [base.relative(p.path) for p in got] == visible  # type: ignore[union-attr]
    ev = open_events(where)
    assert ev is not None
    try:
        assert ev.rows == len(events) and ev.issues == []
    finally:
        ev.close()


def test_empty_part_and_folder_without_parts_are_named(tmp_path: Path) -> None:
    data = hb.write(hb.tables(), tmp_path / "raw")
    (data / f"{T.USAGE_EVENTS}.parquet").unlink()
    folder = data / T.USAGE_EVENTS
    (folder / "_temporary").mkdir(parents=True)
    (folder / "_temporary" / "x.parquet").write_bytes(b"")
    with pytest.raises(ContractError, match="no Parquet parts in folder usage_events/"):
        source_files(T.USAGE_EVENTS, folder)
    (folder / "day=1").mkdir()
    (folder / "day=1" / "part-0.parquet").write_bytes(b"")
    with pytest.raises(ContractError, match=r"empty file \(0 bytes\): usage_events/day=1/part-0"):
        source_files(T.USAGE_EVENTS, folder)


# -- (c) another Arrow filesystem, end to end ----------------------------------------------


@pytest.mark.parametrize("events_as", ["parts", "csv"])
def test_memory_filesystem_gives_what_the_local_copy_gives(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    memory: tuple[fsspec.AbstractFileSystem, str],
    events_as: str,
) -> None:
    frames = hb.tables()
    csv = (T.USAGE_EVENTS, T.SUPPORT_TICKETS) if events_as == "csv" else (T.SUPPORT_TICKETS,)
    local = hb.write(frames, tmp_path / "raw", csv=csv)
    if events_as == "parts":
        (local / f"{T.USAGE_EVENTS}.parquet").unlink()
        partitioned(frames[T.USAGE_EVENTS], local / T.USAGE_EVENTS)
    fs, root = memory
    fs.put(str(local), f"{root}/raw", recursive=True)
    where = remote(fs, f"{root}/raw")
    assert where.local_path is None and not where.is_local

    # The small tables: the same coerced frames, sources named by URI.
    here, there = load_folder(local), load_folder(where)
    assert sorted(there) == sorted(here)
    for name, lt in there.items():
        pd.testing.assert_frame_equal(lt.frame, here[name].frame, obj=name)
        assert str(lt.source).startswith("memory://") and lt.issues == []

    # The pipeline's loading step finds the events there, to be scanned, not loaded.
    loaded, events, issues = _load(where, None)
    assert issues == [] and isinstance(events, DataLocation)
    for name, frame in loaded.items():
        pd.testing.assert_frame_equal(frame, here[name].frame, obj=name)

    # `cshealth check`'s view of the events: the same rows, types and issues.
    opened = [open_events(local), open_events(where)]
    try:
        a, b = opened
        assert a is not None and b is not None
        assert (b.rows, b.types, b.issues) == (a.rows, a.types, a.issues)
        rows = "SELECT * FROM events ORDER BY ALL"
        assert b.con.sql(rows).fetchall() == a.con.sql(rows).fetchall()
    finally:
        for ev in opened:
            if ev is not None:
                ev.close()

    # The usage features, DuckDB scanning the Arrow dataset (pandas never reads the events):
    # the same as the local snapshot table's.
    snaps = build_snapshots(local, hb.PARAMS)
    # ... and the whole pipeline and `cshealth check` on the store give what they give here
    pd.testing.assert_frame_equal(build_snapshots(where, hb.PARAMS).frame, snaps.frame)
    checked = [check_folder(d, run_date=dt.date(2030, 1, 1)) for d in (local, where)]
    assert checked[1].success == checked[0].success
    assert checked[1].failure_table() == checked[0].failure_table()
    assert checked[1].tables_checked == checked[0].tables_checked

    def no_pandas(*args: object, **kwargs: object) -> None:
        raise AssertionError("the events must not be read into pandas")

    monkeypatch.setattr(pd, "read_parquet", no_pandas)
    monkeypatch.setattr(pd, "read_csv", no_pandas)
    grid = snaps.frame[[Col.ACCOUNT_ID, Col.AS_OF]]
    con = duckdb.connect()
    try:
        usage = usage_features(events, grid, hb.PARAMS.windows, hb.PARAMS.key_event_types,
                               con=DuckDBEngine(con))  # fmt: skip
        view = con.sql("SELECT sql FROM duckdb_views() WHERE view_name = 'events_src'")
        assert "arrow" in view.fetchall()[0][0]  # a registered Arrow dataset, scanned lazily
    finally:
        con.close()
    assert len(usage.columns) >= 10
    pd.testing.assert_frame_equal(usage, snaps.frame[usage.columns])


def test_remote_unreadable_part_is_named(
    tmp_path: Path, memory: tuple[fsspec.AbstractFileSystem, str]
) -> None:
    frames = hb.tables()
    local = hb.write(frames, tmp_path / "raw")
    (local / f"{T.USAGE_EVENTS}.parquet").unlink()
    partitioned(frames[T.USAGE_EVENTS], local / T.USAGE_EVENTS)
    (local / T.USAGE_EVENTS / "year=2024" / "month=02" / "part-1.parquet").write_bytes(b"PAR1 no")
    fs, root = memory
    fs.put(str(local), f"{root}/raw", recursive=True)
    with pytest.raises(ContractError, match=r"unreadable file usage_events/year=2024/month=02/"):
        open_events(remote(fs, f"{root}/raw"))


def test_remote_location_is_not_a_local_path(memory: tuple[fsspec.AbstractFileSystem, str]) -> None:
    fs, root = memory
    fs.mkdir(f"{root}/raw")
    where = remote(fs, f"{root}/raw")
    with pytest.raises(TypeError, match=r"memory://.*remote location"):
        Path(where)  # type: ignore[arg-type]


# -- (d) unsupported schemes ---------------------------------------------------------------


def test_unsupported_scheme_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(LocationError, match=r"ftp://host/raw: unsupported scheme ftp://") as err:
        locate("ftp://host/raw")
    assert "s3://" in str(err.value) and "file://" in str(err.value)
    out = str(tmp_path / "s.parquet")
    for argv in (["check", "ftp://host/raw", "--reports", str(tmp_path)],
                 ["features", "--data", "ftp://host/raw", "--out", out]):  # fmt: skip
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "unsupported scheme ftp://" in lines[0], lines


def test_store_uris_and_unreachable_stores() -> None:
    gs = locate("gs://bucket/raw")  # no request is made until the folder is read
    assert gs.child(T.USAGE_EVENTS).spark_uri == "gs://bucket/raw/usage_events"
    assert gs.child(T.USAGE_EVENTS).path == "bucket/raw/usage_events"
    s3 = pafs.S3FileSystem(
        region="us-east-1", anonymous=True, scheme="http", endpoint_override="127.0.0.1:9",
        connect_timeout=1, request_timeout=1,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1),
    )  # fmt: skip
    assert (
        DataLocation("s3://bucket/raw?region=us-east-1", s3, "bucket/raw")
        .child(T.USAGE_EVENTS)
        .spark_uri
        == "s3a://bucket/raw/usage_events"
    )  # Spark's name for S3, no Arrow options
    where = DataLocation("s3://AKIA:secret@bucket/raw", s3, "bucket/raw")
    assert "secret" not in str(where)
    with pytest.raises(LocationError, match=r"s3://AKIA:\*\*\*@bucket/raw: cannot reach"):
        load_folder(where)


def test_missing_folder_stays_a_clear_error(tmp_path: Path, capsys) -> None:
    missing = (tmp_path / "nope").as_uri()
    with pytest.raises(ContractError, match=f"{missing}: data folder does not exist"):
        load_folder(missing)
    assert main(["check", missing, "--reports", str(tmp_path / "r")]) == 1
    assert f"checks failed for {tmp_path / 'nope'}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("uri", "spark"),
    [
        ("s3://AKIA:se/cret@bucket/raw?region=x", "s3a://bucket/raw"),
        ("abfss://cont:KEY==@acct.dfs.core.windows.net/raw",
         "abfss://cont@acct.dfs.core.windows.net/raw"),
        ("abfss://cont@acct.dfs.core.windows.net/raw",
         "abfss://cont@acct.dfs.core.windows.net/raw"),
    ],
)  # fmt: skip
def test_secrets_in_uris_are_never_shown_nor_handed_to_spark(uri: str, spark: str) -> None:
    """Masked when shown (a secret may hold `/`), in Arrow's errors too; Spark never gets one."""
    where = DataLocation(uri, pafs.LocalFileSystem(), "/x")
    assert "cret" not in str(where) and "KEY==" not in str(where)
    remote = DataLocation(uri, pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem("memory"))),
                          "/x")  # fmt: skip
    assert remote.spark_uri == spark


def test_arrow_errors_do_not_repeat_the_secret() -> None:
    with pytest.raises(LocationError) as err:
        locate("s3://AKIA:TOP/SECRET@buck et/raw?region=us-east-1")  # Arrow cannot parse it
    assert "SECRET" not in str(err.value) and "AKIA:***@" in str(err.value)


def test_generate_refuses_a_remote_folder(tmp_path: Path, capsys) -> None:
    """`generate` writes locally: never a local folder named `s3:` for an s3:// URI."""
    assert main(["generate", "--out", "s3://bucket/raw", "--truth", str(tmp_path / "t.parquet"),
                 "--accounts", "10"]) == 2  # fmt: skip
    assert "generate writes a local folder" in capsys.readouterr().err
    assert not Path("s3:").exists()
