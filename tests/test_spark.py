"""The Spark engine: the same snapshot table as DuckDB, and the same point-in-time property.

Spark runs `local[2]` in this process (Java 17+ and the `spark` extra, both installed by
`make test`). Deselect with `-m "not spark"`.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path

import features_data as hb
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings

from features.engine import SparkEngine, to_spark_sql
from features.pipeline import build_snapshots
from features.settings import FeatureParams
from features.snapshots import SnapshotTable, meta_path
from simulator import generate, write_dataset
from tests.test_features_leakage import PARAMS, _apply, assert_features_unchanged, later_records

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def assert_same(duck: SnapshotTable, spark: SnapshotTable) -> None:
    """Same keys, values (floats within 1e-9 relative), labels and metadata."""
    pd.testing.assert_frame_equal(duck.frame, spark.frame, rtol=1e-9, check_exact=False)
    assert duck.metadata() == spark.metadata()


def test_hand_built_data_give_the_same_table(spark: SparkEngine, tmp_path: Path) -> None:
    data = hb.write(hb.tables(), tmp_path / "raw")
    assert_same(build_snapshots(data, hb.PARAMS), build_snapshots(data, hb.PARAMS, engine=spark))


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated data set whose events are a partitioned Parquet folder."""
    raw = tmp_path_factory.mktemp("spark") / "raw"
    write_dataset(generate(60, 14, 11, dt.date(2024, 1, 1), truth_samples=2), raw, None)
    events = pq.read_table(raw / "usage_events.parquet")
    (raw / "usage_events.parquet").unlink()
    n = events.num_rows
    for i in range(3):  # three parts, as a lakehouse writes them
        part = raw / "usage_events" / f"part={i}"
        part.mkdir(parents=True)
        pq.write_table(events.slice(i * n // 3, (i + 1) * n // 3 - i * n // 3), part / "x.parquet")
    return raw


def test_generated_data_give_the_same_table(spark: SparkEngine, generated: Path) -> None:
    params = FeatureParams()
    duck = build_snapshots(generated, params)
    assert len(duck.frame) > 300 and duck.frame[duck.labels["churn"]].notna().sum() > 100
    assert_same(duck, build_snapshots(generated, params, engine=spark))


def test_csv_events_give_the_same_table(spark: SparkEngine, tmp_path: Path) -> None:
    frames = hb.tables()
    data = hb.write(frames, tmp_path / "raw", csv=("usage_events",))
    assert (data / "usage_events.csv").exists()
    assert_same(build_snapshots(data, hb.PARAMS), build_snapshots(data, hb.PARAMS, engine=spark))


def test_no_events_at_all(spark: SparkEngine, tmp_path: Path) -> None:
    frames = hb.tables()
    frames["usage_events"] = frames["usage_events"].iloc[:0]
    data = hb.write(frames, tmp_path / "raw")
    with pytest.raises(Exception, match="usage_events"):  # the contract: not empty
        build_snapshots(data, hb.PARAMS, engine=spark)


@pytest.fixture(scope="module")
def spark_base(spark: SparkEngine, tmp_path_factory: pytest.TempPathFactory) -> SnapshotTable:
    """The hand-built data's table, built on Spark once for every example."""
    return build_snapshots(hb.write(hb.tables(), tmp_path_factory.mktemp("base")), PARAMS,
                           engine=spark)  # fmt: skip


@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])  # fmt: skip
@given(case=later_records())
def test_later_records_do_not_change_features_on_spark(
    spark: SparkEngine, spark_base: SnapshotTable, case: tuple[pd.Timestamp, list[tuple[str, dict]]]
) -> None:
    """The point-in-time property of tests/test_features_leakage.py, on Spark."""
    as_of, records = case
    with tempfile.TemporaryDirectory() as tmp:
        data = hb.write(_apply(as_of, records), Path(tmp) / "raw")
        assert_features_unchanged(spark_base, build_snapshots(data, PARAMS, engine=spark), as_of)


def test_cli_writes_the_same_table_and_metadata(
    spark: SparkEngine, generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cshealth.cli import main

    monkeypatch.chdir(tmp_path)  # the snapshot check's report lands here
    out = {}
    for engine in ("duckdb", "spark"):
        out[engine] = tmp_path / f"{engine}.parquet"
        argv = ["-q", "features", "--data", str(generated), "--out", str(out[engine]),
                "--run-date", "2026-12-01", "--engine", engine]  # fmt: skip
        assert main(argv) == 0
    assert spark.spark.getActiveSession() is not None  # the CLI left the shared session up
    duck, sp = (SnapshotTable.read(out[e]) for e in ("duckdb", "spark"))
    assert_same(duck, sp)
    meta = [json.loads(meta_path(out[e]).read_text()) for e in ("duckdb", "spark")]
    assert meta[0] == meta[1]


def test_duckdb_sql_is_translated_for_spark() -> None:
    """DuckDB forms the families use come out as Spark's own."""
    assert "DATEDIFF(DAY, a, b)" in to_spark_sql("SELECT date_diff('day', a, b) FROM t")
    assert "CAST(x AS DATE)" in to_spark_sql("SELECT x::DATE FROM t")
    assert "TIMESTAMP_NTZ" in to_spark_sql("SELECT CAST(x AS TIMESTAMP) FROM t")


def test_empty_frames_register_with_a_schema(spark: SparkEngine) -> None:
    frame = pd.DataFrame({"t": pd.Series([], dtype=object), "x": pd.Series([], dtype=float),
                          "at": pd.Series([], dtype="datetime64[us]")})  # fmt: skip
    spark.register("empty_t", frame)
    assert spark.rows("SELECT count(*) FROM empty_t") == [(0,)]
    types = dict(spark.spark.table("empty_t").dtypes)
    assert types == {"t": "string", "x": "double", "at": "timestamp_ntz"}
    spark.unregister("empty_t")


def test_event_rules_are_checked_on_spark_as_on_duckdb(spark: SparkEngine, tmp_path: Path) -> None:
    """Events are validated where the features run: the same issues, rows and examples."""
    from features.io import ContractError
    from tests.test_features import BAD_EVENT_ISSUES, bad_events_data

    data = bad_events_data(tmp_path / "raw")
    texts = []
    for engine in (None, spark):
        with pytest.raises(ContractError) as err:
            build_snapshots(data, hb.PARAMS, dt.date(2030, 1, 1), engine=engine)
        texts.append(str(err.value))
    assert texts[0] == texts[1]
    assert all(line in texts[1] for line in BAD_EVENT_ISSUES), texts[1]


def test_uncoercible_and_missing_event_columns_are_named_on_spark(
    spark: SparkEngine, tmp_path: Path
) -> None:
    """CSV events Spark cannot cast, or without a required column: DuckDB's error, word for word."""
    from features.contract import Col, T
    from features.io import ContractError

    frames = hb.tables()
    events = frames.pop(T.USAGE_EVENTS).astype({Col.EVENT_TIME: "str"})
    events[Col.QUANTITY] = "1"
    events.loc[events.index[2], Col.EVENT_TIME] = "not a date"
    events.loc[events.index[3], Col.QUANTITY] = "lots"
    data = hb.write(frames, tmp_path / "bad")
    said = []
    for broken in (events, events.drop(columns=[Col.USER_ID])):
        broken.to_csv(data / f"{T.USAGE_EVENTS}.csv", index=False)
        texts = []
        for engine in (None, spark):
            with pytest.raises(ContractError) as err:
                build_snapshots(data, hb.PARAMS, engine=engine)
            texts.append(str(err.value))
        assert texts[0] == texts[1]
        said.append(texts[1])
    assert "usage_events.event_time: not coercible to timestamp (1 rows) e.g. not a date" in said[0]
    assert "usage_events.quantity: not coercible to float (1 rows) e.g. lots" in said[0]
    assert "usage_events.user_id: missing column" in said[1]


def test_event_times_with_offsets_are_read_as_utc_on_spark(
    spark: SparkEngine, tmp_path: Path
) -> None:
    """`...-05:00` is 5 hours later in UTC on both engines (an offset dropped would leak)."""
    from features.contract import Col, T

    frames = hb.tables()
    events = frames.pop(T.USAGE_EVENTS)
    shifted = events[Col.EVENT_TIME] - pd.Timedelta(hours=5)
    # the same instants written with a -05:00 offset: 23:30 UTC on a day is 18:30-05:00
    events[Col.EVENT_TIME] = shifted.dt.strftime("%Y-%m-%dT%H:%M:%S-05:00")
    data = hb.write(frames, tmp_path / "raw")
    events.to_csv(data / f"{T.USAGE_EVENTS}.csv", index=False)
    plain = hb.write(hb.tables(), tmp_path / "plain")
    want = build_snapshots(plain, hb.PARAMS)
    assert_same(want, build_snapshots(data, hb.PARAMS))
    assert_same(want, build_snapshots(data, hb.PARAMS, engine=spark))


def test_unreadable_event_files_are_named_on_spark(spark: SparkEngine, tmp_path: Path) -> None:
    """A corrupt part or a folder without parts: the file named, as on DuckDB, no traceback."""
    from features.contract import T
    from features.io import ContractError

    frames = hb.tables()
    data = hb.write(frames, tmp_path / "raw")
    (data / f"{T.USAGE_EVENTS}.parquet").unlink()
    folder = data / T.USAGE_EVENTS
    folder.mkdir()
    frames[T.USAGE_EVENTS].to_parquet(folder / "part-0.parquet", index=False)
    (folder / "part-1.parquet").write_bytes(b"PAR1 not parquet at all PAR1")
    for engine in (None, spark):
        with pytest.raises(ContractError, match=r"unreadable file usage_events/part-1\.parquet"):
            build_snapshots(data, hb.PARAMS, engine=engine)
    for part in folder.iterdir():
        part.unlink()
    for engine in (None, spark):
        with pytest.raises(ContractError, match=r"no Parquet parts in folder usage_events/"):
            build_snapshots(data, hb.PARAMS, engine=engine)


def test_a_reused_session_is_set_to_utc(spark: SparkEngine) -> None:
    """A notebook's session in another zone is reused, and set to what the features need."""
    spark.spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    again = SparkEngine.start()
    assert again.spark is spark.spark and not again.owned
    assert spark.spark.conf.get("spark.sql.session.timeZone") == "UTC"


def test_usage_buckets_cut_at_62_days_give_the_definitions_on_spark(spark: SparkEngine) -> None:
    """The bit-mask SQL, transpiled, on a quarterly calendar (buckets cut at 62 days)."""
    from conftest import SIM_START

    from features.contract import Col, T
    from features.settings import Windows
    from features.usage import usage_features
    from tests.test_features import CALENDARS, _usage_by_brute_force

    sim = generate(accounts=80, months=10, seed=3, start=SIM_START, truth_samples=2)
    events = sim.tables[T.USAGE_EVENTS]
    ids = sorted(events[Col.ACCOUNT_ID].unique())[:10]
    events = events[events[Col.ACCOUNT_ID].isin(ids)].reset_index(drop=True)
    dates = CALENDARS["quarterly"](events[Col.EVENT_TIME].min().normalize())
    grid = pd.DataFrame([(a, d) for d in dates for a in ids], columns=[Col.ACCOUNT_ID, Col.AS_OF])
    grid[Col.AS_OF] = grid[Col.AS_OF].astype("datetime64[us]")
    keys = tuple(sorted(events[Col.EVENT_TYPE].unique())[:2])
    got = usage_features(events, grid, Windows(), keys, con=spark)
    want = _usage_by_brute_force(events, grid, Windows(), keys)
    pd.testing.assert_frame_equal(got, want[got.columns], rtol=1e-12)
    assert (got["stickiness_dau_mau_30d"] > 0).any()
