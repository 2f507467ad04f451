"""Great Expectations plumbing: a quiet ephemeral context, and its results as Failures."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from data_checks.report import Failure
from features.io import MAX_EXAMPLES


class GxRunner:
    """An ephemeral GX context with one pandas data source; quiet and analytics-free."""

    def __init__(self) -> None:
        gx_log = logging.getLogger("great_expectations")
        if gx_log.level == logging.NOTSET:  # its import alone logs dozens of INFO lines
            gx_log.setLevel(logging.WARNING)
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        config = DataContextConfig(
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        )
        self._gx = gx
        self.context = gx.get_context(project_config=config, mode="ephemeral")
        self._source = self.context.data_sources.add_pandas("raw")
        self._batches: dict[str, Any] = {}

    def validate(
        self, name: str, asset: str, frame: pd.DataFrame, expectations: list[Any], key: list[str]
    ) -> Any:
        """Validate the whole `frame` against `expectations`; examples carry the key."""
        gx = self._gx
        if asset not in self._batches:
            self._batches[asset] = self._source.add_dataframe_asset(
                asset
            ).add_batch_definition_whole_dataframe(asset)
        suite = gx.ExpectationSuite(name=name, expectations=expectations)
        result_format: dict[str, Any] = {
            "result_format": "SUMMARY",
            "partial_unexpected_count": MAX_EXAMPLES,
            "return_unexpected_index_query": False,
        }
        if key:
            result_format["unexpected_index_column_names"] = key
        with warnings.catch_warnings(), _no_fingerprint():
            warnings.simplefilter("ignore")
            batch = self._batches[asset].get_batch(batch_parameters={"dataframe": frame})
            return batch.validate(suite, result_format=result_format)


@contextlib.contextmanager
def _no_fingerprint() -> Iterator[None]:
    """Skip GX's batch fingerprint, an MD5 over every row (~3 s per batch of 10 M rows)."""
    # GX hashes each in-memory batch below HASH_THRESHOLD bytes only to label the result,
    # a label we never use. Should the constant disappear, hashing simply happens again.
    from great_expectations.execution_engine import pandas_execution_engine as engine

    saved = getattr(engine, "HASH_THRESHOLD", None)
    engine.HASH_THRESHOLD = 0
    try:
        yield
    finally:
        if saved is None:
            del engine.HASH_THRESHOLD
        else:
            engine.HASH_THRESHOLD = saved


def failures_from(vr: Any, table: str, frame: pd.DataFrame, key: list[str]) -> list[Failure]:
    """Failures from a GX suite result; an expectation that raised counts as failed."""
    out = []
    for r in vr.results:
        cfg = r.expectation_config
        meta = cfg.meta or {}
        check, column = meta.get("check", cfg.type), meta.get("column")
        error = _raised(r.exception_info)
        if error is not None:
            out.append(Failure(table, f"{check} (could not run)", column, 0, [error[:300]]))
        elif not r.success:
            res = r.result or {}
            if "unexpected_count" in res:
                rows = int(res["unexpected_count"])
                kw = cfg.kwargs
                columns = kw.get("column_list") or [
                    c for c in (kw.get("column"), kw.get("column_A"), kw.get("column_B")) if c
                ]
                out.append(Failure(table, check, column, rows, examples(res, columns, key)))
            else:  # a whole-column (type) expectation
                seen = str(frame[column].dtype) if column in frame else res.get("observed_value")
                out.append(Failure(table, check, column, len(frame), [f"observed {seen}"]))
    return out


def _raised(info: Any) -> str | None:
    """The exception message in a GX exception_info (flat or keyed by metric), if any."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "exception")
    for v in info.values():
        msg = _raised(v)
        if msg is not None:
            return msg
    return None


def examples(res: dict[str, Any], columns: list[str], key: list[str]) -> list[str]:
    """Up to five readable examples: key values and offending values, or row numbers."""
    index = res.get("partial_unexpected_index_list") or []
    values = res.get("partial_unexpected_list") or []
    out = []
    if key and index and all(isinstance(d, dict) for d in index):
        for d in index:
            rest = [c for c in d if c not in key]
            out.append(" ".join(f"{c}={_fmt(d.get(c))}" for c in [*key, *rest]))
    else:
        rows = index if len(index) == len(values) else [None] * len(values)
        for i, v in zip(rows, values, strict=True):
            if isinstance(v, dict):
                desc = " ".join(f"{c}={_fmt(x)}" for c, x in v.items())
            elif isinstance(v, tuple | list) and len(v) == len(columns):
                desc = " ".join(f"{c}={_fmt(x)}" for c, x in zip(columns, v, strict=True))
            else:
                desc = f"{columns[0]}={_fmt(v)}" if columns else _fmt(v)
            out.append(desc if i is None else f"row {i}: {desc}")
    return list(dict.fromkeys(out))[:MAX_EXAMPLES]


def _fmt(v: Any) -> str:
    """A value as a short string: null for missing, dates without a midnight time."""
    if v is None or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
        return "null"
    if isinstance(v, dt.datetime | np.datetime64):
        ts = pd.Timestamp(v)
        if pd.isna(ts):
            return "null"
        return ts.date().isoformat() if ts == ts.normalize() else ts.isoformat(sep=" ")
    if isinstance(v, np.generic):
        return _fmt(v.item())
    return str(v)


def in_set_result(
    frame: pd.DataFrame, column: str, values: list[Any], key: list[str]
) -> dict[str, Any]:
    """A GX-shaped SUMMARY result for 'column in values', from one vectorised isin."""
    s = frame[column]
    rows = np.flatnonzero((s.notna() & ~s.isin(values)).to_numpy())
    head = frame.iloc[rows[:MAX_EXAMPLES]]
    labels = list(dict.fromkeys([*key, column]))  # the column may be part of the key
    index = head[labels].to_dict("records") if key else rows[:MAX_EXAMPLES].tolist()
    return {
        "element_count": len(frame),
        "unexpected_count": len(rows),
        "partial_unexpected_list": head[column].tolist(),
        "partial_unexpected_index_list": index,
    }
