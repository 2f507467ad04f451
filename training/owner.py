"""Who is doing something: this process's identity, and whether a recorded one still runs.

A `cshealth train` killed with SIGKILL cannot close its MLflow run or clean its
staging folder; the next one can, once it knows the owner is gone. A pid alone is
not enough (pids are reused, and another machine or container has its own), so the
identity also holds the host, the pid namespace and the kernel's start time of the
process (Linux `/proc`; elsewhere the pid check alone decides).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

PID, HOST, NAMESPACE, STARTED = "pid", "host", "pid_namespace", "started"


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of `pid` from /proc, None when unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # the command name may hold spaces
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "unknown"


def identity() -> dict[str, str]:
    """This process: pid, host, pid namespace and start time (as text, for tags and names)."""
    stat = _stat(os.getpid())
    return {PID: str(os.getpid()), HOST: socket.gethostname(), NAMESPACE: _namespace(),
            STARTED: stat[1] if stat else "unknown"}  # fmt: skip


def same_machine(ident: dict[str, str]) -> bool:
    """Whether `ident` was recorded on this host and pid namespace (its pid means the same)."""
    return ident.get(HOST) == socket.gethostname() and ident.get(NAMESPACE) == _namespace()


def alive(ident: dict[str, str]) -> bool | None:
    """Whether the process `ident` describes still runs; None when it cannot be told from here."""
    pid_text = ident.get(PID, "")
    if not pid_text.isdigit() or not same_machine(ident):
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to another user
    stat = _stat(pid)
    if stat is None:
        return True  # no /proc: the pid exists, assume it is the same process
    state, started = stat
    if state == "Z":
        return False  # killed, not yet reaped by its parent
    return ident.get(STARTED) in (None, "unknown", started)
