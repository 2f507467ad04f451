"""Process lifetime: no server process may outlive the one that started it.

``cshealth serve`` starts ``bentoml serve`` (the arbiter), which starts the worker
serving HTTP. If a parent is killed with SIGKILL, nothing tells its children: an
orphaned worker kept the port, the old key and the old models, and the next start's
readiness probe reached it. So:

* `die_with_parent` (a ``preexec_fn`` for ``subprocess.Popen``) asks Linux to send the
  child SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``): cshealth serve ->
  bentoml serve.
* `ParentWatchdog` polls ``os.getppid()`` in the worker and stops it (SIGTERM, then a
  hard exit) once its parent is gone: bentoml serve -> worker. Polling, not
  PR_SET_PDEATHSIG, because that signal fires when the parent *thread* that forked us
  ends, and the arbiter's spawning thread is not ours to reason about.
* `port_in_use` lets ``cshealth serve`` refuse a port something already listens on.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import socket
import sys
import threading

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a forked child before exec: get `sig` when the parent dies (Linux; else no-op)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)


class ParentWatchdog:
    """Stops this process when its parent dies (the parent pid changes)."""

    def __init__(self, interval_s: float = 0.5, grace_s: float = 10.0) -> None:
        self.parent = os.getppid()
        self.interval_s = interval_s
        self.grace_s = grace_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cshealth-watchdog", daemon=True)

    def start(self) -> ParentWatchdog:
        if self.parent > 1:  # already orphaned (or started by init): nothing to watch
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if os.getppid() != self.parent:
                log.warning("parent process %d is gone: stopping this worker (pid %d)",
                            self.parent, os.getpid())  # fmt: skip
                os.kill(os.getpid(), signal.SIGTERM)  # graceful first (uvicorn shuts down)
                if not self._stop.wait(self.grace_s):
                    os._exit(1)
                return


def port_in_use(host: str, port: int) -> bool:
    """Whether binding `host:port` fails because something already uses it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # as the server will: TIME_WAIT leftovers must not count as in use
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return True
            raise
    return False
