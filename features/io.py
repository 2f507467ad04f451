"""Read raw tables per the contract, and write outputs atomically.

A table `NAME` is found in a data folder as `NAME.parquet`, `NAME.csv` or a folder
`NAME/` of Parquet parts. Its columns are coerced to the contract's types; values
that cannot be coerced are reported (table, column, rows, examples), never dropped
silently: they become null in the returned frame and are listed in the issues.

The data folder is a path, a `file://` URI or an object store (`features.location`):
a table's source is a `Path` when local, else a `DataLocation` read through Arrow.
"""

from __future__ import annotations

import codecs
import itertools
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyarrow.fs import FileType

from features.contract import CONTROL_CHARACTERS, TABLES, Column, Kind, Table
from features.location import DataLocation, Source, as_source, locate

if TYPE_CHECKING:
    import pyarrow.dataset as ds

log = logging.getLogger(__name__)

MAX_EXAMPLES = 5
#: longest example value shown (an over-long id is cut, not printed whole)
MAX_EXAMPLE_CHARS = 40
_CONTROL = re.compile(CONTROL_CHARACTERS)
_TRUE = {"true", "t", "yes", "y", "1", "1.0"}
_FALSE = {"false", "f", "no", "n", "0", "0.0"}


@dataclass(frozen=True)
class Issue:
    """A contract violation found while locating or reading a table."""

    table: str
    column: str | None
    check: str
    rows: int = 0
    examples: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        ex = f" e.g. {', '.join(self.examples)}" if self.examples else ""
        count = f" ({self.rows} rows)" if self.rows else ""
        return f"{where}: {self.check}{count}{ex}"


class ContractError(ValueError):
    """Raised when data does not meet the contract; carries the issues found."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        super().__init__("; ".join(str(i) for i in issues))


@dataclass
class LoadedTable:
    """A coerced table, where it came from, and what could not be coerced."""

    table: Table
    frame: pd.DataFrame
    source: Source
    issues: list[Issue] = field(default_factory=list)


DataFolder = DataLocation | Path | str


def find_source(data_dir: DataFolder, name: str) -> Source | None:
    """The file or folder holding table `name` (a Path when local), None when absent.

    Raises ContractError when several candidates exist, since picking one would
    silently ignore the other.
    """
    folder = locate(data_dir)
    children = [folder.child(f"{name}.parquet"), folder.child(f"{name}.csv"), folder.child(name)]
    candidates = [
        c for c, info in zip(children, folder.infos(children), strict=True)
        if info.type != FileType.NotFound
    ]  # fmt: skip
    if len(candidates) > 1:
        found = ", ".join(c.name for c in candidates)
        raise ContractError([Issue(name, None, f"ambiguous source: {found}")])
    return as_source(candidates[0]) if candidates else None


def source_files(name: str, source: Source) -> list[Source]:
    """The files holding table `name`: the file itself, or the folder's Parquet parts.

    The parts are listed by Arrow in one call (names starting with "." or "_" skipped,
    as every Parquet reader skips them); they come back as the source does (Paths when
    local). Raises ContractError for a folder without parts and for an empty (0-byte) file.
    """
    where = locate(source)
    info = where.info()
    if info.type != FileType.Directory:
        found = [info]
    else:
        found = where.parquet_parts()
        if not found:
            raise ContractError([Issue(name, None, f"no Parquet parts in folder {where.name}/")])
    files = [as_source(where.at(f.path)) for f in found]
    empty = [f for f, i in zip(files, found, strict=True) if i.size == 0]
    if empty:
        raise ContractError(
            [Issue(name, None, f"empty file (0 bytes): {_shown(empty[0], source)}")]
        )
    return files


def read_source(path: Source, files: list[Source] | None = None) -> pd.DataFrame:
    """Read a Parquet file, a folder of Parquet parts (`files`), or a CSV (all text)."""
    if isinstance(path, DataLocation):  # not local: through its Arrow filesystem
        if path.suffix == ".csv":
            with path.open_input_file() as fh:
                return pd.read_csv(fh, dtype=str, keep_default_na=True)
        parts = [locate(f).path for f in files or ()]
        whole = not files or parts == [path.path]
        return pd.read_parquet(path.path if whole else parts, filesystem=path.filesystem)
    if path.suffix == ".csv":
        # Read CSV as text so that ids keep leading zeros; coercion types it.
        return pd.read_csv(path, dtype=str, keep_default_na=True)
    # A list of parts: the same files DuckDB reads, each path taken literally.
    return pd.read_parquet([str(f) for f in files] if path.is_dir() and files else path)


def arrow_dataset(source: Source, files: list[Source]) -> ds.Dataset:
    """The files of a table as an Arrow dataset (scanned lazily, e.g. by DuckDB).

    Parquet parts as they are (the files' own columns, as DuckDB's `read_parquet` over
    the same list gives); a CSV with every column as text, empty fields null, as
    DuckDB's `read_csv(all_varchar=True)` reads it.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.dataset as ds

    where = locate(source)
    paths = [locate(f).path for f in files]
    if where.suffix != ".csv":
        return ds.dataset(paths, filesystem=where.filesystem, format="parquet")
    with where.open_input_stream() as fh:  # the header, for the column names
        names = pacsv.open_csv(fh).schema.names
    text = pacsv.ConvertOptions(
        column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=True,
        null_values=[""], quoted_strings_can_be_null=True,
    )  # fmt: skip
    fmt = ds.CsvFileFormat(convert_options=text)
    return ds.dataset(paths, filesystem=where.filesystem, format=fmt)


def _shown(file: Source, source: Source) -> str:
    """A file as the user knows it: `NAME.csv`, or `NAME/part.parquet` inside a folder."""
    where, at = locate(source), locate(file)
    if at.path == where.path:
        return where.name
    return f"{where.name}/{where.relative(at.path)}"


def _problem(file: Source) -> str | None:
    """Why `file` cannot be read, when a cheap look finds out (None: it looks fine)."""
    import pyarrow.parquet as pq

    at = locate(file)
    try:
        if at.suffix == ".csv":
            decoder = codecs.getincrementaldecoder("utf-8")()
            with at.open_input_stream() as fh:
                while chunk := fh.read(1 << 20):
                    decoder.decode(chunk)
                decoder.decode(b"", final=True)
        else:
            pq.read_metadata(at.path, filesystem=at.filesystem)
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except Exception as err:  # any failure to parse is the finding
        return describe(err)
    return None


def describe(err: BaseException) -> str:
    """An exception as one short line: type and message, whitespace collapsed."""
    if isinstance(err, UnicodeDecodeError):
        return "not UTF-8 text"
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def unreadable(name: str, source: Source, files: list[Source], err: BaseException) -> ContractError:
    """The error for a table whose files a reader failed on, naming the file at fault."""
    for file in files:
        problem = _problem(file)
        if problem is not None:
            return ContractError(
                [Issue(name, None, f"unreadable file {_shown(file, source)}: {problem}")]
            )
    shown = _shown(files[0], source) if len(files) == 1 else f"{locate(source).name}/"
    return ContractError([Issue(name, None, f"unreadable file {shown}: {describe(err)}")])


def _example(value: object) -> str:
    text = _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), str(value))
    return text if len(text) <= MAX_EXAMPLE_CHARS else text[: MAX_EXAMPLE_CHARS - 1] + "…"


def example_values(values: Iterable[object]) -> tuple[str, ...]:
    """Up to MAX_EXAMPLES values as short text, control characters escaped."""
    return tuple(_example(v) for v in itertools.islice(values, MAX_EXAMPLES))


def rule_issue(
    table: str, column: str | None, rule: str, rows: int = 0, values: Iterable[object] = ()
) -> Issue:
    """A violated contract value rule (named as the GX check names it), with examples."""
    return Issue(table, column, f"fails {rule!r}", rows, example_values(values))


def _to_string(s: pd.Series) -> pd.Series:
    if pd.api.types.is_float_dtype(s) and np.all(np.isnan(s) | (s == np.round(s))):
        # Integer ids read as float because of gaps: "7.0" would not match "7".
        s = s.astype("Int64")
    out = s.astype("str")
    return out.where(s.notna(), None).astype("str")


def _to_number(s: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(s):
        return s.astype("float64")
    if pd.api.types.is_numeric_dtype(s):
        return s.astype("float64")
    return pd.to_numeric(s.astype("str").str.strip(), errors="coerce").astype("float64")


def _to_bool(s: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(s):
        return s.astype("boolean")
    text = s.astype("str").str.strip().str.lower()
    out = pd.Series(pd.NA, index=s.index, dtype="boolean")
    out[text.isin(_TRUE)] = True
    out[text.isin(_FALSE)] = False
    return out


def _to_time(s: pd.Series, is_date: bool) -> pd.Series:
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        out = s.dt.tz_convert("UTC").dt.tz_localize(None)
    elif pd.api.types.is_datetime64_dtype(s):
        out = s
    else:
        out = pd.to_datetime(s, errors="coerce", utc=True, format="mixed")
        out = out.dt.tz_localize(None)
    out = out.astype("datetime64[us]")
    return out.dt.normalize() if is_date else out


def coerce_column(s: pd.Series, col: Column) -> tuple[pd.Series, pd.Series]:
    """Coerce `s` to the column's dtype; also return the mask of rows that failed."""
    if col.kind == Kind.STRING:
        out = s if s.dtype == "str" else _to_string(s)
        return out, pd.Series(False, index=s.index)
    if s.dtype == "str" or s.dtype == object:
        # Blank text in a typed column is a missing value, not a bad one.
        s = s.mask(s.astype("str").str.strip() == "")
    if col.kind in (Kind.INT, Kind.FLOAT):
        num = _to_number(s)
        failed = s.notna() & num.isna()
        if col.kind == Kind.INT:
            fractional = num.notna() & (num != np.round(num))
            failed |= fractional
            num = num.where(~fractional)
            out = num.astype("Int64")
            if not col.nullable and not out.isna().any():
                out = out.astype("int64")
            return out, failed
        return num, failed
    if col.kind == Kind.BOOL:
        out = _to_bool(s)
        failed = s.notna() & out.isna()
        if not col.nullable and not out.isna().any():
            out = out.astype("bool")
        return out, failed
    out = _to_time(s, is_date=col.kind == Kind.DATE)
    return out, s.notna() & out.isna()


def coerce_frame(df: pd.DataFrame, table: Table) -> tuple[pd.DataFrame, list[Issue]]:
    """Coerce a raw frame to the contract; extra columns are dropped (and logged)."""
    issues: list[Issue] = []
    missing = [c for c in table.required_columns if c not in df.columns]
    issues += [Issue(table.name, c, "missing column") for c in missing]
    extra = [c for c in df.columns if c not in table.column_names]
    if extra:
        log.info("%s: ignoring columns not in the contract: %s", table.name, extra)
    out: dict[str, pd.Series] = {}
    for col in table.columns:
        if col.name in missing:
            continue
        if col.name not in df.columns:
            out[col.name] = pd.Series(col.default, index=df.index)
            continue
        coerced, failed = coerce_column(df[col.name], col)
        if failed.any():
            bad = df.loc[failed, col.name]
            issues.append(
                Issue(
                    table.name,
                    col.name,
                    f"not coercible to {col.kind.value}",
                    int(failed.sum()),
                    example_values(bad),
                )
            )
        out[col.name] = coerced
    return pd.DataFrame(out, index=df.index).reset_index(drop=True), issues


def load_table(data_dir: DataFolder, name: str) -> LoadedTable | None:
    """Load and coerce one table; None when absent (missing required is the caller's call)."""
    table = TABLES[name]
    source = find_source(data_dir, name)
    if source is None:
        return None
    log.info("reading %s from %s", name, source)
    files = source_files(name, source)
    try:
        raw = read_source(source, files)
    except Exception as err:  # any failure to parse a file is a data problem, named
        raise unreadable(name, source, files, err) from err
    frame, issues = coerce_frame(raw, table)
    return LoadedTable(table, frame, source, issues)


def load_folder(data_dir: DataFolder, strict: bool = True) -> dict[str, LoadedTable]:
    """Load every contract table present in `data_dir` (a path, URI or DataLocation).

    With `strict`, a missing required table, a missing column or an uncoercible
    value raises ContractError listing every problem found.
    """
    folder = locate(data_dir)
    if not folder.is_dir():
        raise ContractError([Issue(str(data_dir), None, "data folder does not exist")])
    loaded: dict[str, LoadedTable] = {}
    issues: list[Issue] = []
    for name, table in TABLES.items():
        try:
            lt = load_table(folder, name)
        except ContractError as err:
            issues += err.issues
            continue
        if lt is None:
            if table.required:
                issues.append(Issue(name, None, "missing required table"))
            continue
        loaded[name] = lt
        issues += lt.issues
    if strict and issues:
        raise ContractError(issues)
    return loaded


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write `df` to `path` atomically (temp file in the same folder, then rename)."""
    _atomic(path, lambda tmp: df.to_parquet(tmp, index=False))


def write_text(text: str, path: Path) -> None:
    """Write text to `path` atomically."""
    _atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
