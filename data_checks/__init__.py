"""Great Expectations suites derived from the raw-data contract and the feature metadata."""

from data_checks.checks import check_folder
from data_checks.report import CheckReport, Failure
from data_checks.snapshots import check_snapshots

__all__ = ["CheckReport", "Failure", "check_folder", "check_snapshots"]
