"""Shared fixtures: small data sets made on the fly (no network, nothing committed)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from simulator import SimResult, generate, write_dataset

if TYPE_CHECKING:
    from features.engine import SparkEngine

SIM_START = dt.date(2023, 3, 1)


@pytest.fixture(scope="session")
def generated() -> SimResult:
    """A small simulated data set (shared; never mutate it)."""
    return generate(accounts=80, months=10, seed=3, start=SIM_START, truth_samples=20)


@pytest.fixture(scope="session")
def generated_dir(generated: SimResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`generated` written as Parquet (shared; copy it before corrupting)."""
    out = tmp_path_factory.mktemp("generated") / "raw"
    write_dataset(generated, out, out.parent / "truth.parquet")
    return out


@pytest.fixture
def handmade_dir(tmp_path: Path) -> Path:
    """A tiny clean contract-shaped folder written by hand (not by the simulator).

    Three accounts, all seven tables, Parquet and CSV mixed. `usage_events` carries
    integer account ids (coerced to the contract's strings) and omits `quantity`
    (default 1); the CSVs hold ids as bare numbers and mixed timestamp formats.
    """
    import pandas as pd

    out = tmp_path / "handmade"
    out.mkdir()
    ts = pd.to_datetime
    pd.DataFrame(
        {
            "account_id": ["101", "102", "103"],
            "name": ["Acme", "Globex", "Initech"],
            "segment": ["smb", "mid_market", "enterprise"],
            "industry": ["software", None, "retail"],
            "region": ["emea", "amer", None],
            "created_at": ts(["2022-11-03 09:00", "2023-05-20 14:30", "2023-09-01 08:00"]),
            "csm_id": [None, "csm-7", "csm-2"],
        }
    ).to_parquet(out / "accounts.parquet", index=False)
    (out / "subscriptions.csv").write_text(
        "account_id,start_date,end_date,mrr,seats,plan\n"
        "101,2023-01-01,2023-12-31,99.0,3,starter\n"
        "101,2024-01-01,,120.5,4,starter\n"
        "102,2023-06-01,2024-05-31,2000,25,growth\n"
        "103,2023-09-15,,15000,150,enterprise\n"
    )
    pd.DataFrame(
        {
            "account_id": [101, 101, 102, 103, 103, 103],
            "user_id": ["u1", "u1", "u7", "u9", "u9", "u9"],
            "event_time": ts(
                [
                    "2024-05-01 10:00",
                    "2024-05-02 11:00",
                    "2024-05-03 12:00",
                    "2024-06-01 09:00",
                    "2024-06-01 09:00",  # identical repeats are legitimate
                    "2024-06-01 09:00",
                ]
            ),
            "event_type": ["login", "report", "login", "export", "export", "export"],
        }
    ).to_parquet(out / "usage_events.parquet", index=False)
    (out / "support_tickets.csv").write_text(
        "ticket_id,account_id,created_at,resolved_at,priority,category,csat,escalated\n"
        "T0001,101,2024-02-01T08:00:00Z,2024-02-01T12:00:00Z,low,billing,5,false\n"
        "T0002,102,2024-03-05 10:00,2024-03-07 16:00,high,bug,2,true\n"
        "T0003,103,2024-04-10 09:30,,urgent,outage,,false\n"
        "T0004,103,2024-06-20 13:00,2024-06-21 09:00,normal,how-to,4,false\n"
    )
    pd.DataFrame(
        {
            "response_id": ["R1", "R2", "R3"],
            "account_id": ["101", "102", "103"],
            "user_id": ["u1", "u7", "u9"],
            "responded_at": ts(["2024-03-01", "2024-03-02", "2024-06-15"]),
            "score": [9, 0, 10],
            "comment": ["great", None, "love it"],
        }
    ).to_parquet(out / "nps_responses.parquet", index=False)
    pd.DataFrame(
        {
            "outcome_id": ["O1", "O2"],
            "account_id": ["101", "103"],
            "kpi": ["handle_time_min", "tickets_deflected"],
            "baseline": [30.0, 100.0],
            "target": [25.0, 400.0],
            "direction": ["decrease", "increase"],
            "start_date": ts(["2024-01-01", "2023-10-01"]),
            "due_date": ts(["2024-04-01", "2024-06-30"]),
        }
    ).to_parquet(out / "outcomes.parquet", index=False)
    (out / "outcome_measurements.csv").write_text(
        "outcome_id,measured_at,value\n"
        "O1,2024-02-01,29\n"
        "O1,2024-04-01,26.5\n"
        "O2,2024-01-01,150\n"
    )
    return out


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkEngine]:
    """One Spark `local[2]` session for the whole test run (a JVM start costs seconds)."""
    from features.engine import SparkEngine

    engine = SparkEngine.start("local[2]")
    assert engine.owned, "another Spark session was active"
    yield engine
    engine.close()
