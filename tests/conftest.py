"""Shared fixtures: small data sets made on the fly (no network, nothing committed)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from cshealth.simulator import SimResult, generate, write_dataset

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
