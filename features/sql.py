"""Shared helpers for the families that aggregate in DuckDB SQL (support, sentiment, outcomes).

Their SQL is kept portable (plain SELECT / JOIN / GROUP BY / CASE / window functions,
so that `sqlglot.transpile(sql, read="duckdb", write="spark")` carries it over); the one
dialect-specific expression, the fractional days between two timestamps, lives here.
Frames are registered on the connection (zero-copy) with their row number as `_row`,
which makes ties deterministic (order by time, then `_row`) and, for the grid, gives
each snapshot row its position to align the result with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import duckdb
import numpy as np
import pandas as pd

from features.contract import Col
from features.engine import DuckDBEngine, Engine, as_engine

ROW = "_row"
MICROSECONDS_PER_DAY = 86_400_000_000


def days_between_sql(later: str, earlier: str) -> str:
    """DuckDB SQL for the whole and fractional days from `earlier` to `later` (DOUBLE).

    Same arithmetic as `features.calendar.days_between`: the difference in
    microseconds divided by the microseconds of a day; NULL when either is NULL.
    """
    diff = f"date_diff('microsecond', {earlier}, {later})"
    return f"(CAST({diff} AS DOUBLE) / {MICROSECONDS_PER_DAY})"


def numbered(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """`columns` of `frame` plus its row number `_row` (a new frame; the input is untouched)."""
    return frame[list(columns)].assign(**{ROW: np.arange(len(frame), dtype="int64")})


def snapshot_rows(grid: pd.DataFrame) -> pd.DataFrame:
    """The grid's (account_id, as_of) with each row's position as `_row`."""
    return numbered(grid, [Col.ACCOUNT_ID, Col.AS_OF])


@contextlib.contextmanager
def registered(
    con: Engine | duckdb.DuckDBPyConnection | None, frames: Mapping[str, pd.DataFrame]
) -> Iterator[Engine]:
    """`con` as an engine (a private DuckDB one when None) with `frames` registered as views.

    The views are dropped afterwards (a private connection is closed).
    """
    engine = as_engine(con)
    try:
        for name, frame in frames.items():
            engine.register(name, frame)
        yield engine
    finally:
        if con is None and isinstance(engine, DuckDBEngine):
            engine.con.close()
        else:
            for name in frames:
                engine.unregister(name)


def aligned(raw: pd.DataFrame, grid: pd.DataFrame) -> pd.DataFrame:
    """Query result with one row per grid row, ordered by `_row`, indexed like `grid`."""
    if len(raw) != len(grid) or not np.array_equal(raw[ROW].to_numpy(), np.arange(len(grid))):
        raise AssertionError("the query did not return one row per grid row, in order")
    return raw.drop(columns=ROW).set_index(grid.index)
