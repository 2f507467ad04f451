"""A real `bentoml serve serving.service:HealthService` on 127.0.0.1, for the HTTP tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving_data import REPO

KEY = "test-key-7f3a"
AUTH = {"Authorization": f"Bearer {KEY}"}
READY_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every descendant still alive (orphans a test may have made)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=10)


@dataclass
class Server:
    """A `bentoml serve` subprocess in its own process group."""

    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    startup_s: float = 0.0
    #: what `bentoml serve` runs (a built Bento's tag for tests/test_bento.py) and where
    target: str = "serving.service:HealthService"
    cwd: Path = REPO

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> subprocess.Popen:
        """Start the process (not waiting for readiness)."""
        bentoml = Path(sys.executable).with_name("bentoml")
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [str(bentoml), "serve", self.target, "--host", "127.0.0.1",
                 "--port", str(self.port)],
                cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self.proc

    def start(self) -> Server:
        t0 = time.monotonic()
        proc = self.launch()
        while time.monotonic() - t0 < READY_TIMEOUT_S:
            if proc.poll() is not None:
                pytest.fail(f"server exited ({proc.returncode}):\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    self.startup_s = time.monotonic() - t0
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"server not ready in {READY_TIMEOUT_S} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def post(self, path: str, body: Any = None, headers: dict | None = AUTH,
             content: bytes | None = None) -> httpx.Response:  # fmt: skip
        kw: dict[str, Any] = {"content": content} if content is not None else {"json": body}
        return httpx.post(f"{self.url}{path}", headers=headers, timeout=30, **kw)
