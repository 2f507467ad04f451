"""Contract and reader tier: declarations hang together; tables round-trip; coercion reports."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features.contract import REQUIRED_TABLES, TABLES, Col, T
from features.io import (
    ContractError,
    coerce_frame,
    find_source,
    load_folder,
    load_table,
    write_parquet,
)
from simulator import SimResult


def test_contract_is_consistent() -> None:
    assert set(REQUIRED_TABLES) == {T.ACCOUNTS, T.SUBSCRIPTIONS, T.USAGE_EVENTS}
    for table in TABLES.values():
        names = table.column_names
        assert len(names) == len(set(names)), table.name
        assert set(table.key) <= set(names), table.name
        for fk in table.foreign_keys:
            assert fk.column in names
            assert fk.ref_column in TABLES[fk.ref_table].column_names
        for o in table.orderings:
            assert table.column(o.earlier).is_time and table.column(o.later).is_time
        for col in table.columns:
            if col.allowed:
                assert col.kind.value == "string"


@pytest.mark.parametrize("fmt", ["parquet", "csv", "parts"])
def test_round_trip(generated: SimResult, tmp_path: Path, fmt: str) -> None:
    """Every table written as Parquet, CSV or a folder of parts reads back equal."""
    for name, df in generated.tables.items():
        if fmt == "parquet":
            df.to_parquet(tmp_path / f"{name}.parquet", index=False)
        elif fmt == "csv":
            df.to_csv(tmp_path / f"{name}.csv", index=False)
        else:
            (tmp_path / name).mkdir()
            half = len(df) // 2
            df.iloc[:half].to_parquet(tmp_path / name / "part-0.parquet", index=False)
            df.iloc[half:].to_parquet(tmp_path / name / "part-1.parquet", index=False)
    loaded = load_folder(tmp_path)
    for name, df in generated.tables.items():
        expected, _ = coerce_frame(df, TABLES[name])
        got = loaded[name].frame
        assert loaded[name].issues == []
        pd.testing.assert_frame_equal(got, expected, obj=name, check_categorical=False)


def test_coercion_of_foreign_shapes() -> None:
    raw = pd.DataFrame(
        {
            Col.TICKET_ID: [1, 2, 3],
            Col.ACCOUNT_ID: ["007", "8", "9"],
            Col.CREATED_AT: ["2024-01-02T10:00:00+02:00", "2024-01-03", "2024-01-04 12:30"],
            Col.RESOLVED_AT: [None, "2024-01-05", ""],
            Col.PRIORITY: ["low", "high", "urgent"],
            Col.CATEGORY: ["bug", "how_to", "bug"],
            Col.CSAT: ["5", None, "3.0"],
            Col.ESCALATED: ["yes", "FALSE", "1"],
            "internal_note": ["x", "y", "z"],
        }
    )
    df, issues = coerce_frame(raw, TABLES[T.SUPPORT_TICKETS])
    assert issues == []
    assert list(df.columns) == TABLES[T.SUPPORT_TICKETS].column_names
    assert df[Col.TICKET_ID].tolist() == ["1", "2", "3"]
    assert df[Col.ACCOUNT_ID].tolist() == ["007", "8", "9"]
    assert df[Col.CREATED_AT].iloc[0] == pd.Timestamp("2024-01-02 08:00")  # to naive UTC
    assert df[Col.RESOLVED_AT].isna().tolist() == [True, False, True]
    assert df[Col.CSAT].tolist()[0] == 5 and pd.isna(df[Col.CSAT].iloc[1])
    assert df[Col.ESCALATED].tolist() == [True, False, True]


def test_uncoercible_values_are_reported_not_dropped() -> None:
    raw = pd.DataFrame(
        {
            Col.ACCOUNT_ID: ["a", "b", "c"],
            Col.START_DATE: ["2024-01-01", "not a date", "2024-03-01"],
            Col.END_DATE: [None, None, None],
            Col.MRR: ["10.5", "ten", "3"],
            Col.SEATS: ["1", "2.5", "3"],
            Col.PLAN: ["p", "p", "p"],
        }
    )
    df, issues = coerce_frame(raw, TABLES[T.SUBSCRIPTIONS])
    assert len(df) == 3
    by_col = {i.column: i for i in issues}
    assert set(by_col) == {Col.START_DATE, Col.MRR, Col.SEATS}
    assert by_col[Col.MRR].rows == 1 and by_col[Col.MRR].examples == ("ten",)
    assert by_col[Col.SEATS].examples == ("2.5",)
    assert "subscriptions.mrr" in str(by_col[Col.MRR])


def test_optional_default_and_missing_columns() -> None:
    raw = pd.DataFrame({Col.ACCOUNT_ID: ["a"], Col.USER_ID: ["u"], Col.EVENT_TIME: ["2024-01-01"]})
    df, issues = coerce_frame(raw, TABLES[T.USAGE_EVENTS])
    assert [(i.column, i.check) for i in issues] == [(Col.EVENT_TYPE, "missing column")]
    raw[Col.EVENT_TYPE] = "login"
    df, issues = coerce_frame(raw, TABLES[T.USAGE_EVENTS])
    assert issues == [] and df[Col.QUANTITY].tolist() == [1.0]


def test_missing_required_table_and_ambiguous_source(generated_dir: Path, tmp_path: Path) -> None:
    for name in (T.ACCOUNTS, T.SUPPORT_TICKETS):
        pd.read_parquet(generated_dir / f"{name}.parquet").to_parquet(tmp_path / f"{name}.parquet")
    pd.read_parquet(tmp_path / f"{T.ACCOUNTS}.parquet").to_csv(tmp_path / f"{T.ACCOUNTS}.csv")
    with pytest.raises(ContractError) as err:
        load_folder(tmp_path)
    text = str(err.value)
    assert "accounts: ambiguous source" in text
    assert "subscriptions: missing required table" in text
    assert "usage_events: missing required table" in text
    with pytest.raises(ContractError):
        find_source(tmp_path, T.ACCOUNTS)
    assert load_table(tmp_path, T.NPS_RESPONSES) is None
    assert load_folder(tmp_path, strict=False)[T.SUPPORT_TICKETS].issues == []


def test_local_sources_are_paths_whatever_the_folder_was_given_as(
    generated_dir: Path,
) -> None:
    """A path, its text or its file:// URI: the same tables, and sources as Paths."""
    by_path = load_folder(generated_dir)
    for given in (str(generated_dir), generated_dir.as_uri()):
        source = find_source(given, T.USAGE_EVENTS)
        assert isinstance(source, Path) and source == generated_dir / "usage_events.parquet"
        loaded = load_folder(given)
        assert sorted(loaded) == sorted(by_path)
        for name, lt in loaded.items():
            assert lt.source == by_path[name].source and isinstance(lt.source, Path)
            pd.testing.assert_frame_equal(lt.frame, by_path[name].frame, obj=name)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="does not exist"):
        load_folder(tmp_path / "nope")


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    write_parquet(pd.DataFrame({"x": [1]}), target)
    bad = pd.DataFrame({"x": [object()]})  # pyarrow cannot write this
    with pytest.raises(Exception):  # noqa: B017 - any writer error will do
        write_parquet(bad, target)
    assert pd.read_parquet(target)["x"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]
