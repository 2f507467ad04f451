"""The snapshot table: built by `features.pipeline`, written and read only here.

On disk it is a Parquet file (one row per account_id, as_of: features, `mrr`,
one label column per target) and `<stem>.meta.json` beside it, which says how to
read the table: cutoff, horizon, target -> label column, the expansion threshold,
the subscription end-date convention and every feature's metadata.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from features.contract import Col
from features.io import write_parquet, write_text
from features.labels import MRR_COLUMN, label_observed
from features.meta import Feature, from_dict, to_dict

log = logging.getLogger(__name__)

KEY_COLUMNS = (Col.ACCOUNT_ID, Col.AS_OF)
#: who the account is, carried to the score store with each scoring run (not model inputs)
DESCRIPTOR_COLUMNS = (Col.NAME, Col.CSM_ID)
#: every key `write` puts in the metadata; a file lacking one is from an older version
META_KEYS = (
    "cutoff", "rows", "as_of", "horizon_days", "labels", "mrr_column", "expansion_threshold",
    "end_date_convention", "end_date_evidence", "features",
)  # fmt: skip
_RERUN = "re-run `cshealth features` to rebuild it"


def meta_path(path: Path) -> Path:
    """Where the metadata of the table at `path` lives: `<stem>.meta.json` beside it."""
    return Path(path).with_suffix(".meta.json")


@dataclass(frozen=True)
class SnapshotTable:
    """The snapshot table and everything needed to read it."""

    frame: pd.DataFrame
    features: list[Feature]
    cutoff: pd.Timestamp
    horizon_days: int
    #: target name -> label column, e.g. {"churn": "churn_90d", "expansion": "expansion_90d"}
    labels: dict[str, str]
    expansion_threshold: float
    #: how subscriptions.end_date was read: "inclusive" or "exclusive"
    end_date_convention: str
    #: one sentence on how the convention was decided (detected counts or params.yaml)
    end_date_evidence: str

    @property
    def feature_names(self) -> list[str]:
        """Feature columns in table order."""
        return [f.name for f in self.features]

    def metadata(self) -> dict[str, Any]:
        """The JSON-ready description written beside the table."""
        as_of = sorted(pd.to_datetime(self.frame[Col.AS_OF].unique()))
        return {
            "cutoff": self.cutoff.isoformat(),
            "rows": len(self.frame),
            "as_of": [d.date().isoformat() for d in as_of],
            "horizon_days": self.horizon_days,
            "labels": dict(self.labels),
            "mrr_column": MRR_COLUMN,
            "expansion_threshold": self.expansion_threshold,
            "end_date_convention": self.end_date_convention,
            "end_date_evidence": self.end_date_evidence,
            "features": [to_dict(f) for f in self.features],
        }

    def known_at(self, as_of: pd.Timestamp) -> SnapshotTable:
        """The table as data ending just before `as_of` would have given it.

        Its rows up to `as_of` (features are point in time: each row only reads records
        before its own as_of), labels only where observed by then, and that cutoff. What
        `cshealth replay` trains on to score later dates out of time.
        """
        cutoff = pd.Timestamp(as_of) - pd.Timedelta(microseconds=1)
        dates = pd.to_datetime(self.frame[Col.AS_OF])
        frame = self.frame[dates <= pd.Timestamp(as_of)].copy()
        hidden = ~label_observed(dates[dates <= pd.Timestamp(as_of)], cutoff, self.horizon_days)
        for column in self.labels.values():
            frame.loc[hidden.to_numpy(), column] = pd.NA
        return replace(self, frame=frame.reset_index(drop=True), cutoff=cutoff)

    def write(self, path: Path) -> None:
        """Write the table (Parquet) and its metadata (`<stem>.meta.json`), each atomically."""
        path = Path(path)
        write_parquet(self.frame, path)
        # Written second: a metadata file always describes a complete table.
        write_text(json.dumps(self.metadata(), indent=2) + "\n", meta_path(path))
        log.info("wrote %s (%d rows) and %s", path, len(self.frame), meta_path(path).name)

    @classmethod
    def read(cls, path: Path) -> SnapshotTable:
        """Read a table written by `write` (FileNotFoundError / ValueError say what to do)."""
        path = Path(path)
        mpath = meta_path(path)
        if not path.exists() or not mpath.exists():
            raise FileNotFoundError(
                f"{path} (and {mpath.name}) not found: run `cshealth features` first"
            )
        meta = _read_meta(mpath)
        return cls(
            frame=pd.read_parquet(path),
            features=[from_dict(f) for f in meta["features"]],
            cutoff=pd.Timestamp(meta["cutoff"]),
            horizon_days=int(meta["horizon_days"]),
            labels={str(k): str(v) for k, v in meta["labels"].items()},
            expansion_threshold=float(meta["expansion_threshold"]),
            end_date_convention=str(meta["end_date_convention"]),
            end_date_evidence=str(meta["end_date_evidence"]),
        )


def _read_meta(mpath: Path) -> dict[str, Any]:
    """The metadata JSON, checked to be of the current format."""
    try:
        meta = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{mpath} is not valid JSON ({err}): {_RERUN}") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{mpath} is not a snapshot metadata object: {_RERUN}")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(
            f"{mpath} is from an older version of cshealth (no {', '.join(missing)}): {_RERUN}"
        )
    if not isinstance(meta["labels"], dict):
        raise ValueError(f"{mpath} lists labels without their targets (older format): {_RERUN}")
    return meta
