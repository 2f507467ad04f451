"""Owner-only files: scores, features, models and the MLflow store hold customer data.

Everything cshealth creates is private by default (files 0600, folders 0700), whatever
the umask of the process that happens to create it (the CLI, the BentoML worker, a
notebook). The `CSHEALTH_UMASK` setting (octal, e.g. ``022``; `withhold`) sets which
permission bits are withheld instead; the CLI also runs with it as its umask.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from cshealth.errors import UserError

DEFAULT_UMASK = 0o077
_withheld = DEFAULT_UMASK


def umask_setting() -> int:
    """The permission bits cshealth withholds (default 077; `withhold` changes them)."""
    return _withheld


def withhold(mask: int) -> int:
    """Withhold `mask` from now on (the `CSHEALTH_UMASK` setting); returns the previous mask.

    A process-wide policy like the umask itself: the entry points (the CLI, the service)
    set it from their settings.
    """
    global _withheld
    if not 0 <= mask <= 0o777:
        raise UserError(f"CSHEALTH_UMASK={mask:o} is not an octal umask such as 077 or 022")
    previous, _withheld = _withheld, mask
    return previous


def restrict(path: Path) -> None:
    """Withhold the masked permission bits from `path` (a file or folder; not followed)."""
    mode = os.stat(path, follow_symlinks=False).st_mode & 0o7777
    mask = umask_setting()
    if mode & mask:
        os.chmod(path, mode & ~mask)


def restrict_tree(root: Path) -> None:
    """`restrict` `root` and every folder and file under it (symlinks left alone)."""
    root = Path(root)
    if not root.is_dir():
        return
    restrict(root)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            if not path.is_symlink():
                restrict(path)


def private_dirs(folder: Path) -> None:
    """Create `folder` and its missing parents, private (existing folders are left alone)."""
    missing = [p for p in [Path(folder), *Path(folder).parents] if not p.exists()]
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            p.mkdir()
            restrict(p)  # mkdir's mode follows the process umask, not the setting


def private_file(path: Path) -> bool:
    """Create an empty private file unless it exists; whether it was created here."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    restrict(path)
    return True


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
