"""Where the feature SQL runs: DuckDB (the embedded default) or Apache Spark.

Every family's SQL is written once, in DuckDB's dialect and kept portable (plain
SELECT / JOIN / GROUP BY / CASE / window functions; the one dialect-specific
expression in `features.sql`). `DuckDBEngine` runs it as is; `SparkEngine` transpiles
each statement to Spark SQL with sqlglot first. Both offer the same five operations,
so a family never knows which engine it runs on:

* `register(name, frame)` / `unregister(name)`: a small pandas frame as a view;
* `view(name, path_or_select)`: a view over a SELECT (materialised and cached);
* `frame(select)`: a result, one row per snapshot at most, as pandas;
* `rows(select)`: a few rows as tuples.

Spark sessions use UTC and timestamps without time zone (`TIMESTAMP_NTZ`), the data
contract's naive timestamps, so both engines see the same instants.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import duckdb
import pandas as pd

from features.contract import TABLES, Column, Kind, T
from features.io import MAX_EXAMPLES, ContractError, Issue, example_values, source_files
from features.location import Source, as_source, locate

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

#: Spark SQL settings the features rely on: UTC and timestamps without time zone (naive
#: UTC, as the contract's), set on a session started here and on an active one reused
SQL_CONF = {"spark.sql.session.timeZone": "UTC", "spark.sql.timestampType": "TIMESTAMP_NTZ"}

EngineName = Literal["duckdb", "spark"]
ENGINES: tuple[EngineName, ...] = ("duckdb", "spark")
#: the Spark master when none is configured (`CSHEALTH_SPARK_MASTER`)
DEFAULT_SPARK_MASTER = "local[2]"


class Engine(Protocol):
    """What a feature family needs from an SQL engine."""

    name: str

    def register(self, name: str, frame: pd.DataFrame) -> None: ...

    def unregister(self, name: str) -> None: ...

    def view(self, name: str, select: str) -> None: ...

    def frame(self, select: str) -> pd.DataFrame: ...

    def rows(self, select: str) -> list[tuple[Any, ...]]: ...


class DuckDBEngine:
    """DuckDB on one connection (the default engine)."""

    name = "duckdb"

    def __init__(self, con: duckdb.DuckDBPyConnection | None = None) -> None:
        self.con = con if con is not None else duckdb.connect()

    def register(self, name: str, frame: pd.DataFrame) -> None:
        self.con.register(name, frame)

    def unregister(self, name: str) -> None:
        self.con.unregister(name)

    def view(self, name: str, select: str) -> None:
        # a temp table, not a view: the later steps read it several times
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {select}")

    def frame(self, select: str) -> pd.DataFrame:
        return self.con.sql(select).df()

    def rows(self, select: str) -> list[tuple[Any, ...]]:
        return self.con.sql(select).fetchall()


@contextlib.contextmanager
def duckdb_connection(memory_limit: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection within `memory_limit`, spilling to a private temp folder beyond
    it (removed afterwards); closed on exit."""
    con = duckdb.connect()
    spill = Path(tempfile.mkdtemp(prefix="cshealth-duckdb-"))
    try:
        if memory_limit:
            con.execute(f"SET memory_limit = '{memory_limit}'")
        con.execute("SET temp_directory = '{}'".format(str(spill).replace("'", "''")))
        yield con
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


@functools.lru_cache(maxsize=256)
def to_spark_sql(sql: str) -> str:
    """DuckDB SQL as Spark SQL (sqlglot); raises on anything it cannot carry over."""
    import sqlglot

    return sqlglot.transpile(sql, read="duckdb", write="spark",
                             unsupported_level=sqlglot.ErrorLevel.RAISE)[0]  # fmt: skip


class SparkEngine:
    """Apache Spark through a `SparkSession`; each statement transpiled from DuckDB SQL."""

    name = "spark"

    def __init__(self, spark: SparkSession, owned: bool = False) -> None:
        self.spark = spark
        self.owned = owned  # started here: `stop` ends the session
        self._cached: dict[str, Any] = {}

    @classmethod
    def start(cls, master: str | None = None) -> SparkEngine:
        """An engine on the active session (a notebook's, a test's) or on a new one."""
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is None:
            return cls(spark_session(master), owned=True)
        for key, value in SQL_CONF.items():  # the contract's instants need UTC, naive times
            if active.conf.get(key, None) != value:
                log.warning("spark: setting %s = %s on the active session", key, value)
                active.conf.set(key, value)
        return cls(active, owned=False)

    def register(self, name: str, frame: pd.DataFrame) -> None:
        frame = _for_spark(frame)
        # an empty frame has no values to infer types from: give Spark the schema
        df = (self.spark.createDataFrame(frame) if len(frame)
              else self.spark.createDataFrame([], schema=_spark_schema(frame)))  # fmt: skip
        df.createOrReplaceTempView(name)

    def unregister(self, name: str) -> None:
        self.spark.catalog.dropTempView(name)
        cached = self._cached.pop(name, None)
        if cached is not None:
            cached.unpersist()

    def view(self, name: str, select: str) -> None:
        df = self.spark.sql(to_spark_sql(select)).cache()
        df.createOrReplaceTempView(name)
        old = self._cached.pop(name, None)
        if old is not None:
            old.unpersist()
        self._cached[name] = df

    def frame(self, select: str) -> pd.DataFrame:
        out = self.spark.sql(to_spark_sql(select)).toPandas()
        # Spark hands back nanosecond timestamps; the snapshot table keeps microseconds
        for col in out.columns:
            if pd.api.types.is_datetime64_any_dtype(out[col]):
                out[col] = out[col].astype("datetime64[us]")
        return out

    def rows(self, select: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.spark.sql(to_spark_sql(select)).collect()]

    def close(self) -> None:
        """Drop what this engine cached; stop the session when it started it."""
        for df in self._cached.values():
            df.unpersist()
        self._cached.clear()
        if self.owned:
            self.spark.stop()


def _for_spark(frame: pd.DataFrame) -> pd.DataFrame:
    """A frame Spark's Arrow path takes: nullable extension dtypes as plain ones."""
    out = frame.copy()
    for col in out.columns:
        s = out[col]
        if isinstance(s.dtype, pd.CategoricalDtype):
            out[col] = s.astype(object)
        elif pd.api.types.is_extension_array_dtype(s.dtype) and s.dtype.kind in "iufb":
            out[col] = s.astype("float64" if s.dtype.kind in "if" else object)
    return out


def _spark_schema(frame: pd.DataFrame) -> str:
    """A Spark DDL schema for `frame`'s columns from their pandas dtypes."""

    def kind(dtype: Any) -> str:
        if pd.api.types.is_bool_dtype(dtype):
            return "BOOLEAN"
        if pd.api.types.is_integer_dtype(dtype):
            return "BIGINT"
        if pd.api.types.is_float_dtype(dtype):
            return "DOUBLE"
        if pd.api.types.is_datetime64_any_dtype(dtype):
            return "TIMESTAMP_NTZ"
        return "STRING"

    return ", ".join(f"`{c}` {kind(t)}" for c, t in frame.dtypes.items())


def spark_session(master: str | None = None) -> SparkSession:
    """A Spark session for the features (UTC, naive timestamps, quiet, bound to 127.0.0.1
    when local)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as err:  # the optional extra
        raise RuntimeError(
            "the Spark engine needs pyspark and sqlglot: pip install 'cshealth[spark]' "
            "(and Java 17+)"
        ) from err
    master = master or DEFAULT_SPARK_MASTER
    builder = (
        SparkSession.builder.master(master).appName("cshealth-features")
        .config(map=SQL_CONF)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "8")
    )  # fmt: skip
    if master.startswith("local"):
        builder = builder.config("spark.driver.bindAddress", "127.0.0.1").config(
            "spark.driver.host", "127.0.0.1"
        )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    log.info("spark: session on %s (Spark %s)", master, spark.version)
    return spark


#: Spark SQL type per contract kind (timestamps naive, as the contract's)
_SPARK_TYPE = {
    Kind.STRING: "STRING", Kind.INT: "BIGINT", Kind.FLOAT: "DOUBLE", Kind.BOOL: "BOOLEAN",
    Kind.TIMESTAMP: "TIMESTAMP_NTZ", Kind.DATE: "DATE",
}  # fmt: skip


def spark_events_view(engine: SparkEngine, source: Source | str | pd.DataFrame) -> None:
    """Register view `events` on Spark over the usage-events source, typed per the contract.

    The file or folder goes to Spark as a URI (`DataLocation.spark_uri`: `file:///...`,
    `s3a://...`, `gs://...`, `abfss://...`, `hdfs://...`), read by the cluster's own
    Hadoop filesystems; a folder is handed over whole (partitioned Parquet is discovered
    by Spark, never listed here); a CSV is read as text and cast. A missing column or a
    value its cast cannot convert is a ContractError, worded as on DuckDB.
    """
    spark = engine.spark
    if isinstance(source, pd.DataFrame):
        df = spark.createDataFrame(_for_spark(source))
    else:
        where = locate(source)
        source_files(T.USAGE_EVENTS, as_source(where))  # no parts, an empty file: named
        reader = spark.read.option("header", True)
        df = (reader.csv if where.suffix == ".csv" else spark.read.parquet)(where.spark_uri)
    df.createOrReplaceTempView("events_src")
    types = dict(df.dtypes)  # column -> Spark's type name ("string", "timestamp_ntz", ...)
    select, converted, missing = [], [], []
    for c in TABLES[T.USAGE_EVENTS].columns:
        kind = _SPARK_TYPE[c.kind]
        if c.name not in types:
            if c.default is None:
                missing.append(c.name)
            else:
                select.append(f"CAST({c.default!r} AS {kind}) AS `{c.name}`")
            continue
        expr = f"TRY_CAST(`{c.name}` AS {kind})"
        if c.kind == Kind.TIMESTAMP:
            # Text with an offset is converted to UTC, not cut: TIMESTAMP_LTZ reads the
            # offset (TIMESTAMP_NTZ would drop it); the session's zone is UTC.
            expr = f"CAST(TRY_CAST(`{c.name}` AS TIMESTAMP_LTZ) AS {kind})"
        if types[c.name] != kind.lower():
            converted.append((c, expr))
        select.append(f"{expr} AS `{c.name}`")
    if missing:
        raise ContractError([Issue(T.USAGE_EVENTS, m, "missing column") for m in missing])
    _raise_unconverted(spark, converted)
    spark.sql(f"SELECT {', '.join(select)} FROM events_src").createOrReplaceTempView("events")


def _raise_unconverted(spark: SparkSession, converted: list[tuple[Column, str]]) -> None:
    """Values a cast turns into null are contract violations (as on DuckDB): raise them."""
    issues = []
    for c, expr in converted:  # only columns whose source type differs: one scan each
        bad = f"`{c.name}` IS NOT NULL AND {expr} IS NULL"
        n = spark.sql(f"SELECT count(*) FROM events_src WHERE {bad}").collect()[0][0]
        if n:
            rows = spark.sql(f"SELECT `{c.name}` FROM events_src WHERE {bad} LIMIT {MAX_EXAMPLES}")
            examples = example_values(r[0] for r in rows.collect())
            issues.append(
                Issue(T.USAGE_EVENTS, c.name, f"not coercible to {c.kind.value}", n, examples)
            )
    if issues:
        raise ContractError(issues)


def as_engine(con: Engine | duckdb.DuckDBPyConnection | None) -> Engine:
    """`con` as an Engine: a DuckDB connection is wrapped; None gives a fresh DuckDB one."""
    if con is None or isinstance(con, duckdb.DuckDBPyConnection):
        return DuckDBEngine(con)
    return con
