"""Great Expectations expectations derived from the raw-data contract, never by name."""

# Every expectation comes from the attributes of `features.contract` (kinds, nullability,
# allowed values, ranges, keys, orderings, foreign keys). Great Expectations is imported
# inside the functions because importing it takes seconds.

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import pandas as pd

from features.contract import (
    CONTROL_CHARACTERS,
    MAX_ID_LENGTH,
    PANDAS_DTYPE,
    Column,
    ForeignKey,
    Ordering,
    Rule,
    Table,
    future_checked,
    future_rule,
)

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation


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


#: name of the not-null check
NOT_NULL = "not null"


def allowed_name(col: Column) -> str:
    """The name of a column's allowed-values check."""
    return f"allowed values ({', '.join(col.allowed or ())})"


def ordering_name(o: Ordering) -> str:
    """The name of an ordering check (reported on the later column)."""
    return f"on or after {o.earlier}"


def range_name(col: Column) -> str:
    """The name of a column's range check ("between 1 and 5", ">= 0", "<= 10")."""
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
            out.append(gxe.ExpectColumnValuesToNotBeNull(column=c, meta=_meta(NOT_NULL, c)))
        if col.allowed:
            out.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column=c,
                    value_set=list(col.allowed),
                    meta=_meta(allowed_name(col), c),
                )
            )
        if col.min_value is not None or col.max_value is not None:
            out.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=c,
                    min_value=col.min_value,
                    max_value=col.max_value,
                    meta=_meta(range_name(col), c),
                )
            )
        if future_checked(col):
            out.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=c, max_value=bound, meta=_meta(future_rule(bound), c)
                )
            )
        out += _sanity_expectations(col)
    if table.required:
        out.append(
            gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=_meta(Rule.NOT_EMPTY, None))
        )
    key = list(table.key)
    if key and all(k in present for k in key):
        meta = _meta(Rule.UNIQUE_KEY, ", ".join(key))
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
                    meta=_meta(ordering_name(o), o.later),
                )
            )
    return out


def _sanity_expectations(col: Column) -> list[Expectation]:
    """Finite floats; identifiers of bounded length without control characters."""
    import great_expectations.expectations as gxe

    c = col.name
    out: list[Expectation] = []
    if col.must_be_finite:  # NaN is null and passes; +-inf lie outside the float range
        top = sys.float_info.max
        out.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=c, min_value=-top, max_value=top, meta=_meta(Rule.FINITE, c)
            )
        )
    if col.identifier:
        out.append(
            gxe.ExpectColumnValueLengthsToBeBetween(
                column=c, max_value=MAX_ID_LENGTH, meta=_meta(Rule.ID_LENGTH, c)
            )
        )
        out.append(
            gxe.ExpectColumnValuesToNotMatchRegex(
                column=c, regex=CONTROL_CHARACTERS, meta=_meta(Rule.NO_CONTROL, c)
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
