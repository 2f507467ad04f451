"""Great Expectations expectations derived from the raw-data contract, never by name."""

# Every expectation comes from the attributes of `features.contract` (kinds, nullability,
# allowed values, ranges, keys, orderings, foreign keys). Great Expectations is imported
# inside the functions because importing it takes seconds.

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import pandas as pd

from features.contract import PANDAS_DTYPE, Column, ForeignKey, Table

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation


def run_bound(run_date: dt.date | dt.datetime) -> dt.datetime:
    """The latest allowed timestamp: the run date's last microsecond, or the run datetime."""
    if isinstance(run_date, dt.datetime):
        if run_date.tzinfo is not None:
            run_date = run_date.astimezone(dt.UTC).replace(tzinfo=None)
        return pd.Timestamp(run_date).to_pydatetime()
    return dt.datetime.combine(run_date, dt.time.max)


def future_checked(col: Column) -> bool:
    """Whether the column gets a 'not after the run date' check."""
    return col.is_time and not col.future_ok


def _meta(check: str, column: str | None, **extra: str) -> dict[str, Any]:
    return {"check": check, "column": column, **extra}


def _type_names(col: Column) -> list[str]:
    """GX type names for the coerced dtype and its nullable twin."""
    # A non-nullable column holds the nullable dtype when values are missing; the not-null
    # check reports those, so the type check need not repeat it.
    names = []
    for name in dict.fromkeys((col.dtype, PANDAS_DTYPE[(col.kind, True)])):
        dtype = pd.api.types.pandas_dtype(name)
        # GX resolves extension dtypes by class name (Int64Dtype, BooleanDtype).
        ext = isinstance(dtype, pd.api.extensions.ExtensionDtype)
        names.append(type(dtype).__name__ if ext else dtype.name)
    return names


def type_expectations(table: Table, present: Collection[str]) -> list[Expectation]:
    """One type expectation per present column, for the frame as the loader coerced it."""
    import great_expectations.expectations as gxe

    out: list[Expectation] = []
    for col in table.columns:
        if col.name not in present:
            continue
        meta = _meta(f"type {col.dtype}", col.name)
        dtype = pd.api.types.pandas_dtype(col.dtype)
        if isinstance(dtype, pd.StringDtype):
            # The type-list check compares dtype objects and never matches pandas 3's str
            # dtype (GX 1.24); the of-type check compares the scalar type, exact for strings.
            out.append(
                gxe.ExpectColumnValuesToBeOfType(
                    column=col.name, type_=dtype.type.__name__, meta=meta
                )
            )
        else:
            out.append(
                gxe.ExpectColumnValuesToBeInTypeList(
                    column=col.name, type_list=_type_names(col), meta=meta
                )
            )
    return out


def _range_name(col: Column) -> str:
    if col.min_value is not None and col.max_value is not None:
        return f"between {col.min_value:g} and {col.max_value:g}"
    if col.min_value is not None:
        return f">= {col.min_value:g}"
    return f"<= {col.max_value:g}"


def value_expectations(
    table: Table, present: Collection[str], bound: dt.datetime
) -> list[Expectation]:
    """Nulls, allowed values, ranges, run-date bound, key uniqueness and orderings."""
    import great_expectations.expectations as gxe

    out: list[Expectation] = []
    for col in table.columns:
        if col.name not in present:
            continue
        c = col.name
        if not col.nullable:
            out.append(gxe.ExpectColumnValuesToNotBeNull(column=c, meta=_meta("not null", c)))
        if col.allowed:
            out.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column=c,
                    value_set=list(col.allowed),
                    meta=_meta(f"allowed values ({', '.join(col.allowed)})", c),
                )
            )
        if col.min_value is not None or col.max_value is not None:
            out.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=c,
                    min_value=col.min_value,
                    max_value=col.max_value,
                    meta=_meta(_range_name(col), c),
                )
            )
        if future_checked(col):
            out.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=c,
                    max_value=bound,
                    meta=_meta(f"not after run date {bound:%Y-%m-%d %H:%M:%S}", c),
                )
            )
    key = list(table.key)
    if key and all(k in present for k in key):
        meta = _meta("unique key", ", ".join(key))
        if len(key) == 1:
            out.append(gxe.ExpectColumnValuesToBeUnique(column=key[0], meta=meta))
        else:
            out.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=key, meta=meta))
    for o in table.orderings:
        if o.earlier in present and o.later in present:
            out.append(
                gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                    column_A=o.later,
                    column_B=o.earlier,
                    or_equal=True,
                    ignore_row_if="either_value_is_missing",
                    meta=_meta(f"on or after {o.earlier}", o.later),
                )
            )
    return out


def fk_check(fk: ForeignKey) -> str:
    """The name of a foreign-key check."""
    return f"foreign key -> {fk.ref_table}.{fk.ref_column}"


def foreign_key_expectation(fk: ForeignKey, value_set: list[Any]) -> Expectation:
    """Every value of `fk.column` must be one of the referenced table's values."""
    import great_expectations.expectations as gxe

    ref = f"{fk.ref_table}.{fk.ref_column}"
    return gxe.ExpectColumnValuesToBeInSet(
        column=fk.column, value_set=value_set, meta=_meta(fk_check(fk), fk.column, reference=ref)
    )
