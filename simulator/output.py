"""Writing a simulated data set: the seven tables as Parquet, and the ground truth."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from features.contract import TABLES
from features.io import write_parquet
from simulator.core import SimResult


def write_dataset(result: SimResult, out_dir: Path, truth_file: Path | None) -> dict[str, int]:
    """Write the tables as Parquet into `out_dir` (and the truth); return rows per table.

    Tables are written into a temporary folder beside `out_dir` and moved in only
    when all are written, so a failure never leaves a half-written data set.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name, df in result.tables.items():
            df.to_parquet(tmp / f"{name}.parquet", index=False)
        out_dir.mkdir(exist_ok=True)
        for name in TABLES:
            # A CSV file or a partitioned folder of the same table would make the source ambiguous.
            for stale in (out_dir / f"{name}.csv", out_dir / name):
                if stale.is_dir():
                    shutil.rmtree(stale)
                else:
                    stale.unlink(missing_ok=True)
            (tmp / f"{name}.parquet").replace(out_dir / f"{name}.parquet")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if truth_file is not None:
        write_parquet(result.truth, Path(truth_file))
    return {name: len(df) for name, df in result.tables.items()}
