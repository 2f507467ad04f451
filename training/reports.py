"""The training reports (`metrics.json`, `plots/`) replaced as one set, never mixed.

`cshealth train` builds the whole set in a staging folder inside `reports_dir`
(same file system, so renames are atomic), logs it to MLflow, and only when the run
has finished publishes it: the marker `training_run.json` (run id and a sha256 per
file) is written into the staging folder (the commit point), then `plots/`,
`metrics.json` and the marker are renamed into place. A reader sees the set of the
last finished run; during the three renames it can tell a mix from the marker.

A process killed before the commit leaves a staging folder without a marker: the next
`cshealth train` deletes it and the old set stays. Killed after the commit, the next one
finishes the renames (roll forward). `reports_dir` may hold other stages' output
(`reports/checks/`): only the entries named here are touched.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from cshealth.files import file_sha256
from training import owner

log = logging.getLogger(__name__)

METRICS, PLOTS, MARKER = "metrics.json", "plots", "training_run.json"
_PREFIX = ".train-staging-"
_OWNER = ".owner.json"  # inside a staging folder: the process building it
_OLD = ".old-plots"  # inside a staging folder: the plots it replaced, deleted at the end


def _write_json(doc: dict, path: Path) -> None:
    """Write `doc` to `path` atomically (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(doc, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def stage(reports_dir: Path) -> Path:
    """A fresh staging folder in `reports_dir` for this process (leftovers dealt with first)."""
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    recover(reports_dir)
    folder = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=reports_dir))
    _write_json(owner.identity(), folder / _OWNER)
    return folder


def _owner_of(folder: Path) -> dict[str, str]:
    """Who builds `folder`: its owner file, else the pid in its name (killed before writing it)."""
    try:
        return json.loads((folder / _OWNER).read_text())
    except (OSError, ValueError):
        pid = folder.name.removeprefix(_PREFIX).split("-", 1)[0]
        return {**owner.identity(), owner.PID: pid, owner.STARTED: "unknown"}


def recover(reports_dir: Path) -> None:
    """Finish committed staging folders of dead processes; delete their uncommitted ones."""
    for folder in sorted(Path(reports_dir).glob(f"{_PREFIX}*")):
        if not folder.is_dir() or owner.alive(_owner_of(folder)):
            continue  # a concurrent `cshealth train` (or unknown): not ours to touch
        if (folder / MARKER).exists():
            run = json.loads((folder / MARKER).read_text()).get("run_id")
            log.warning("reports: finishing the interrupted update of %s to run %s",
                        reports_dir, run)  # fmt: skip
            _swap_in(folder, Path(reports_dir))
        else:
            log.warning("reports: removing %s, the partial reports of an interrupted "
                        "`cshealth train`", folder.name)  # fmt: skip
            shutil.rmtree(folder, ignore_errors=True)


def discard(folder: Path) -> None:
    """Remove a staging folder that will not be published (the run failed)."""
    shutil.rmtree(folder, ignore_errors=True)


def publish(folder: Path, reports_dir: Path, run_id: str) -> Path:
    """Commit the staged set (marker with run id and hashes), then rename it into place."""
    folder, reports_dir = Path(folder), Path(reports_dir)
    files = [folder / METRICS] if (folder / METRICS).exists() else []
    files += sorted(p for p in (folder / PLOTS).glob("*") if p.is_file())
    marker = {
        "run_id": run_id,
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "files": {p.relative_to(folder).as_posix(): file_sha256(p) for p in files},
    }
    _write_json(marker, folder / MARKER)  # the commit point
    _swap_in(folder, reports_dir)
    return reports_dir / MARKER


def _swap_in(folder: Path, reports_dir: Path) -> None:
    """Rename a committed set into place; safe to repeat after an interruption at any step."""
    staged, current, old = folder / PLOTS, reports_dir / PLOTS, folder / _OLD
    if staged.is_dir():
        if current.exists() and not old.exists():
            os.rename(current, old)
        os.rename(staged, current)
    if (folder / METRICS).exists():
        os.replace(folder / METRICS, reports_dir / METRICS)
    os.replace(folder / MARKER, reports_dir / MARKER)
    shutil.rmtree(folder, ignore_errors=True)


def read_marker(reports_dir: Path) -> dict | None:
    """The published set's marker (run id, file hashes), None when there is none."""
    try:
        return json.loads((Path(reports_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def consistent(reports_dir: Path) -> bool:
    """Whether every file the marker lists is present with its hash, and no other plot."""
    marker = read_marker(reports_dir)
    if marker is None:
        return False
    reports_dir = Path(reports_dir)
    plots = {f"{PLOTS}/{p.name}" for p in (reports_dir / PLOTS).glob("*") if p.is_file()}
    listed = marker.get("files", {})
    if plots != {k for k in listed if k.startswith(f"{PLOTS}/")}:
        return False
    return all((reports_dir / k).is_file() and file_sha256(reports_dir / k) == v
               for k, v in listed.items())  # fmt: skip
