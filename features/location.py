"""Where a data folder lives: a local path, a `file://` URI or an object store.

`locate(data)` turns what the user gave (`--data`, `data.raw_dir`) into a
`DataLocation`: the folder's URI, the `pyarrow.fs.FileSystem` that reaches it and the
path inside that filesystem. Plain paths and `file://` URIs are the local filesystem;
`s3://` (also spelt `s3a://`), `gs://`, `hdfs://`/`viewfs://` and `abfs://`/`abfss://`
are Arrow's own filesystems, which take their credentials from the environment as
each store's SDK does (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_*, the Hadoop
configuration). Any other filesystem (an fsspec one, a test's in-memory one) is
passed as `locate(uri, filesystem=...)`.

Listing a folder is one call into Arrow (`FileSelector`, recursive), never a Python
walk; names starting with "." or "_" anywhere below the folder are skipped, as Arrow's
dataset discovery, DuckDB and Spark skip them (`_SUCCESS`, `.part.crc`, `_temporary/`).
A table's file or folder is handed around as a `Path` when local (the fast native
readers take it as before) and as a `DataLocation` otherwise (`Source`).
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

#: schemes Arrow opens itself (`pyarrow.fs.FileSystem.from_uri`), by the name Arrow knows
ARROW_SCHEMES = {"s3": "s3", "s3a": "s3", "s3n": "s3", "gs": "gs", "gcs": "gs",
                 "hdfs": "hdfs", "viewfs": "viewfs", "abfs": "abfs", "abfss": "abfss"}  # fmt: skip
#: the scheme Spark's Hadoop filesystems use for the same store (S3 is `s3a` there)
SPARK_SCHEMES = {"s3": "s3a", "s3n": "s3a", "gcs": "gs"}
SUPPORTED = "file://, " + ", ".join(f"{s}://" for s in ARROW_SCHEMES)
#: Parquet readers skip files and folders whose names start with these
HIDDEN_PREFIXES = (".", "_")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):(//)?")
#: `scheme://key:secret@` anywhere in a text (a secret may hold `/`: up to the `@`)
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^/@:\s'\"]*):[^@\s'\"]*@")
_T = TypeVar("_T")


class LocationError(ValueError):
    """A data location that cannot be used: unsupported scheme, unreachable store."""


class NotLocalError(LocationError, TypeError):
    """A remote location used where only a local path will do (`os.fspath`)."""


def _shown(text: str) -> str:
    """`text` (a URI, an error message) without the secrets URIs in it carry
    (`scheme://key:secret@host`)."""
    return _USERINFO.sub(r"\1:***@", text)


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = _shown(" ".join(f"{type(err).__name__}: {err}".split()))  # Arrow repeats the URI
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class DataLocation:
    """A file or folder in a filesystem: `uri` as shown, `path` inside `filesystem`."""

    uri: str
    filesystem: pafs.FileSystem = field(compare=False, repr=False)
    path: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def local_path(self) -> Path | None:
        """The local path; None for a remote location."""
        return Path(self.path) if self.is_local else None

    @property
    def spark_uri(self) -> str:
        """What to hand Spark: `file:///abs/path` (not percent-encoded: Hadoop reads it
        literally), else the URI with Spark's name for the scheme (`s3` -> `s3a`)."""
        if self.is_local:
            return "file://" + self.path
        scheme, _, rest = self.uri.partition(":")
        scheme = SPARK_SCHEMES.get(scheme.lower(), scheme)
        # Hadoop takes credentials from its configuration, never from the URI: a secret
        # is dropped, and S3's key with it (an `abfss://container@account` name stays).
        if m := re.match(r"//([^/@:]*)(?::[^@]*)?@", rest):
            user = f"{m[1]}@" if m[1] and scheme != "s3a" else ""
            rest = f"//{user}{rest[m.end():]}"
        return scheme + ":" + rest.partition("?")[0]

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def suffix(self) -> str:
        return PurePath(self.name).suffix

    def child(self, name: str) -> DataLocation:
        """The location of `name` (a file or folder name, or a relative path) inside this one."""
        path = posixpath.join(self.path.rstrip("/") or "/", name)
        if self.is_local:
            return DataLocation(Path(path).as_uri(), self.filesystem, path)
        base, query, options = self.uri.partition("?")  # s3://bucket/raw?region=...
        return DataLocation(f"{base.rstrip('/')}/{name}{query}{options}", self.filesystem, path)

    def at(self, path: str) -> DataLocation:
        """The location of `path` (inside the same filesystem), found below this one."""
        inner = self.relative(path)
        return self.child(inner) if inner else self

    def relative(self, path: str) -> str:
        """`path` (inside the same filesystem) relative to this location ('' for itself)."""
        base, inner = self.path.strip("/"), path.strip("/")
        if inner == base:
            return ""
        if base and not inner.startswith(base + "/"):
            raise ValueError(f"{path} is not inside {self.path}")
        return inner[len(base) + 1 :] if base else inner

    def infos(self, locations: list[DataLocation]) -> list[pafs.FileInfo]:
        """File infos of several locations in this filesystem, in one call."""
        return self._ask(lambda: self.filesystem.get_file_info([x.path for x in locations]))

    def info(self) -> pafs.FileInfo:
        return self.infos([self])[0]

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def size(self) -> int | None:
        return self.info().size

    def listing(self) -> list[pafs.FileInfo]:
        """Every file below this folder, recursively, in one call; hidden names skipped."""
        selector = pafs.FileSelector(self.path, recursive=True)
        found = self._ask(lambda: self.filesystem.get_file_info(selector))
        return [
            f for f in found
            if f.type == pafs.FileType.File
            and not any(n.startswith(HIDDEN_PREFIXES) for n in self.relative(f.path).split("/"))
        ]  # fmt: skip

    def parquet_parts(self) -> list[pafs.FileInfo]:
        """The folder's Parquet parts (`*.parquet`, hidden names skipped), in path order."""
        parts = [f for f in self.listing() if f.path.endswith(".parquet")]
        return sorted(parts, key=lambda f: self.relative(f.path).split("/"))

    def open_input_stream(self) -> pa.NativeFile:
        return self._ask(lambda: self.filesystem.open_input_stream(self.path))

    def open_input_file(self) -> pa.NativeFile:
        return self._ask(lambda: self.filesystem.open_input_file(self.path))

    def _ask(self, call: Callable[[], _T]) -> _T:
        """`call()`; a store that cannot be reached is a LocationError naming the URI."""
        if self.is_local:
            return call()
        try:
            return call()
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowException) as err:
            raise LocationError(f"{self}: cannot reach the store: {_one_line(err)}") from err

    def __str__(self) -> str:
        """The local path, or the URI without any credentials in it."""
        return self.path if self.is_local else _shown(self.uri)

    def __fspath__(self) -> str:
        """The local path, so that a local location goes wherever a path does."""
        if not self.is_local:
            raise NotLocalError(f"{self}: a remote location, where a local path is needed")
        return self.path


#: a table's file or folder: a Path when local, else its DataLocation
Source = Path | DataLocation


def _local(path: str | os.PathLike[str]) -> DataLocation:
    absolute = os.path.abspath(os.fspath(path))
    return DataLocation(Path(absolute).as_uri(), pafs.LocalFileSystem(), absolute)


def is_remote(data: str | os.PathLike[str]) -> bool:
    """Whether `data` is a URI of a store other than local files (opens nothing)."""
    if isinstance(data, PurePath):
        return False
    match = _SCHEME.match(os.fspath(data))
    return bool(match and match[2] and match[1].lower() != "file")


def locate(
    data: str | os.PathLike[str] | DataLocation, filesystem: pafs.FileSystem | None = None
) -> DataLocation:
    """The location of a data folder (or file) given as a path or a URI.

    A `Path` is always local; a string is a URI when it starts with `scheme://` (or
    `file:/`). With `filesystem`, `data` is a path (or URI, for display) inside it.
    Raises LocationError for an unsupported scheme or a store Arrow cannot open.
    """
    if isinstance(data, DataLocation):
        return data
    if isinstance(data, PurePath):
        return _local(data)
    text = os.fspath(data)
    match = _SCHEME.match(text)
    scheme = match[1].lower() if match and (match[2] or match[1].lower() == "file") else ""
    if filesystem is not None:
        inner = text[match.end() :] if scheme else text
        return DataLocation(text, filesystem, inner)
    if not scheme:
        return _local(text)
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise LocationError(f"{text}: a file:// URI names a local path (file:///abs/path)")
        return _local(unquote(parts.path))
    if scheme not in ARROW_SCHEMES:
        raise LocationError(
            f"{_shown(text)}: unsupported scheme {scheme}://; "
            f"supported: {SUPPORTED} (or a local path)"
        )
    arrow_uri = ARROW_SCHEMES[scheme] + text[len(scheme) :]
    try:
        fs, path = pafs.FileSystem.from_uri(arrow_uri)
    except (OSError, pa.ArrowException, ValueError) as err:
        raise LocationError(f"{_shown(text)}: cannot open the store: {_one_line(err)}") from err
    return DataLocation(text, fs, path)


def as_source(location: DataLocation) -> Source:
    """A location as the readers take it: a Path when local."""
    local = location.local_path
    return local if local is not None else location
