"""The contract's value rules on a coerced table, for the feature stage.

`cshealth features` may run without `cshealth check`, so it enforces the rules whose
violation would silently distort features or labels itself: a required table with no
rows, non-finite numbers, identifiers the score store cannot hold or a terminal would
interpret, timestamps after the run date, duplicate keys. The rules and their names
come from `features.contract`, as do the GX suites' (`data_checks.suites`); usage
events, never loaded into pandas, are checked in SQL by `features.usage`.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from features.contract import (
    CONTROL_CHARACTERS,
    MAX_ID_LENGTH,
    Column,
    Rule,
    Table,
    future_checked,
    future_rule,
)
from features.io import Issue, rule_issue


def _violations(
    col: Column, s: pd.Series, bound: dt.datetime | None
) -> list[tuple[str, pd.Series]]:
    """(rule, mask of the rows breaking it) for each value rule of column `col`."""
    out = []
    if col.must_be_finite:
        out.append((Rule.FINITE, pd.Series(np.isinf(s.to_numpy(dtype="float64")), index=s.index)))
    if col.identifier:
        text = s.astype("str").where(s.notna(), "")
        out.append((Rule.ID_LENGTH, text.str.len() > MAX_ID_LENGTH))
        out.append((Rule.NO_CONTROL, text.str.contains(CONTROL_CHARACTERS, regex=True)))
    if bound is not None and future_checked(col):
        out.append((future_rule(bound), s.notna() & (s > pd.Timestamp(bound))))
    return out


def frame_issues(table: Table, frame: pd.DataFrame, bound: dt.datetime | None) -> list[Issue]:
    """Violations of the value rules in a coerced `frame` (`bound`: latest allowed time)."""
    if table.required and frame.empty:
        return [rule_issue(table.name, None, Rule.NOT_EMPTY)]
    issues = []
    for col in table.columns:
        if col.name not in frame:
            continue
        s = frame[col.name]
        for rule, bad in _violations(col, s, bound):
            if bad.any():
                issues.append(rule_issue(table.name, col.name, rule, int(bad.sum()), s[bad]))
    key = list(table.key)
    if key and all(k in frame for k in key):
        dup = frame.duplicated(key, keep=False)
        if dup.any():
            shown = frame.loc[dup, key].astype("str").agg(" ".join, axis=1).drop_duplicates()
            issues.append(
                rule_issue(table.name, ", ".join(key), Rule.UNIQUE_KEY, int(dup.sum()), shown)
            )
    return issues
