"""Adversarial checks of the HTTP service and `cshealth serve`.

Real processes on 127.0.0.1 over a private copy of the shared registry and store: a
leftover variable must not disable auth, random paths must not grow /metrics, killed
parents must not leave a worker on the port, a blank key is a one-line error, and
rejected requests log one escaped line, unknown fields are 422, bodies are capped.
"""

from __future__ import annotations

import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from serving.process import port_in_use
from tests.http_server import AUTH, KEY, READY_TIMEOUT_S, Server, free_port, kill_tree
from tests.serving_data import REPO, ServingSetup, serving_setup

pytestmark = pytest.mark.slow

CLI = Path(sys.executable).with_name("cshealth")
BENTOML = Path(sys.executable).with_name("bentoml")


@dataclass
class State:
    setup: ServingSetup
    root: Path
    env: dict[str, str]
    server: Server


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[State]:
    shared = serving_setup(tmp_path_factory)
    root = tmp_path_factory.mktemp("adv-http")
    setup = shared.copy_state(root / "state")
    env = {**os.environ, **setup.env(), "CSHEALTH_API_KEY": KEY,
           "BENTOML_HOME": str(root / "bentoml"), "DO_NOT_TRACK": "true",
           "BENTOML_DO_NOT_TRACK": "true", "PYTHONUNBUFFERED": "1",
           "CSHEALTH_LOAD_RETRY_S": "1"}  # fmt: skip
    env.pop("CSHEALTH_NO_AUTH", None)
    prom = root / "prom"
    prom.mkdir()
    server = Server({**env, "PROMETHEUS_MULTIPROC_DIR": str(prom)}, root / "server.log")
    try:
        server.start()
        yield State(setup, root, env, server)
    finally:
        server.stop()


# ----- helpers ------------------------------------------------------------------------------
@dataclass
class Serve:
    """A `cshealth serve` process (own session), its output collected by a thread."""

    proc: subprocess.Popen
    port: int
    lines: list[str]

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, prefix: str, timeout: float = READY_TIMEOUT_S) -> bool:
        """Whether a line starting with `prefix` appeared before the process ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.startswith(prefix) for line in list(self.lines)):
                return True
            if self.proc.poll() is not None:
                time.sleep(0.3)  # let the reader catch the last lines
                return any(line.startswith(prefix) for line in list(self.lines))
            time.sleep(0.2)
        return False

    def kill(self) -> None:
        kill_tree(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.wait(10)


def _serve(state: State, env: dict[str, str], *args: str, port: int | None = None) -> Serve:
    port = port or free_port()
    proc = subprocess.Popen(
        [str(CLI), "--params", str(state.setup.params), "serve", "--port", str(port), *args],
        cwd=REPO, env={**env, **_private_bentoml(state)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    serve = Serve(proc, port, [])

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            serve.lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return serve


def _private_bentoml(state: State) -> dict[str, str]:
    """A BentoML home and metrics folder of its own: `bentoml serve` wipes the metrics
    folder under a shared BENTOML_HOME at start, which would blank the module server's
    /metrics (its counters would then vanish mid-test)."""
    path = state.root / f"bentoml-{uuid.uuid4().hex[:8]}"
    (path / "prom").mkdir(parents=True)
    return {"BENTOML_HOME": str(path), "PROMETHEUS_MULTIPROC_DIR": str(path / "prom")}


def _score(port: int, headers: dict | None) -> int:
    body = {"account_ids": ["x"]}
    r = httpx.post(f"http://127.0.0.1:{port}/score", json=body, headers=headers, timeout=30)
    return r.status_code


# ----- 2: a leftover CSHEALTH_NO_AUTH does not disable auth -----------------------------------
def test_leftover_no_auth_variable_is_refused_by_bentoml_serve(state: State) -> None:
    env = {**state.env, **_private_bentoml(state), "CSHEALTH_NO_AUTH": "yes"}
    server = Server(env, state.root / "leftover.log",
                    port=free_port())  # fmt: skip
    proc = server.launch()
    try:
        rc = proc.wait(READY_TIMEOUT_S)  # bounded: it must refuse, not serve
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        server.stop()
        kill_tree(proc.pid)
    assert rc not in (None, 0), f"bentoml serve started despite the leftover:\n{server.tail()}"
    assert "error: CSHEALTH_NO_AUTH" in server.tail(), server.tail()
    assert "Traceback" not in server.tail()


def test_leftover_no_auth_variable_is_dropped_by_cshealth_serve(state: State) -> None:
    serve = _serve(state, {**state.env, "CSHEALTH_NO_AUTH": "yes"})
    try:
        assert serve.wait_for("try:"), serve.text
        assert _score(serve.port, None) == 401  # auth stays on
        assert _score(serve.port, AUTH) == 200
        assert "ignoring the inherited CSHEALTH_NO_AUTH" in serve.text
    finally:
        serve.kill()


def test_no_auth_flag_turns_auth_off_loudly(state: State) -> None:
    serve = _serve(state, state.env, "--no-auth")  # CSHEALTH_API_KEY is set too
    try:
        assert serve.wait_for("try:"), serve.text
        assert _score(serve.port, None) == 200
        text = serve.text
        assert "WARNING: authentication is OFF" in text  # cshealth serve's own output
        # ... and the server's log (the worker logs it at WARNING)
        assert re.search(r"WARNING.*authentication is OFF \(cshealth serve --no-auth\)", text)
    finally:
        serve.kill()


# ----- 3: random paths do not grow /metrics -------------------------------------------------
def test_random_paths_do_not_grow_metrics(state: State) -> None:
    url = state.server.url
    before = httpx.get(f"{url}/metrics", timeout=120).text
    marker = uuid.uuid4().hex[:10]
    with httpx.Client(base_url=url, timeout=120) as client:
        for i in range(3000):
            headers = AUTH if i % 2 else None  # 401s and 404s alike
            client.get(f"/{marker}-{uuid.uuid4().hex}", headers=headers)
        after = client.get("/metrics").text  # bounded wait: a bloated /metrics is slow
    endpoints = set(re.findall(r'endpoint="([^"]*)"', after))
    print(f"/metrics: {len(before)} bytes before, {len(after)} after 3,000 random paths; "
          f"endpoint labels: {sorted(endpoints)}")  # fmt: skip
    assert not [e for e in endpoints if marker in e]
    assert "/{unmatched}" in endpoints  # counted, under one label
    assert len(endpoints) <= 12
    assert len(after) < len(before) + 50_000


# ----- 5: killed parents leave no worker behind ------------------------------------------------
def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


@pytest.mark.parametrize("victims", ["cshealth", "cshealth+arbiter"])
def test_killed_parents_free_the_port_and_a_new_start_serves_the_new_key(
    state: State, victims: str
) -> None:
    first = _serve(state, {**state.env, "CSHEALTH_API_KEY": "old-key-1"})
    procs: list[psutil.Process] = []
    second = None
    try:
        assert first.wait_for("try:"), first.text
        procs = _tree(first.proc.pid)
        arbiter = next(p for p in procs if p.ppid() == first.proc.pid)
        assert len(procs) >= 3, procs  # cshealth serve -> bentoml serve -> worker
        first.proc.send_signal(signal.SIGKILL)
        if victims.endswith("arbiter"):
            arbiter.kill()
        _, alive = psutil.wait_procs(procs, timeout=45)
        assert not alive, f"still running after their parent was killed: {alive}"
        assert not port_in_use("127.0.0.1", first.port)
        second = _serve(state, {**state.env, "CSHEALTH_API_KEY": "new-key-2"}, port=first.port)
        assert second.wait_for("try:"), second.text
        assert _score(first.port, {"Authorization": "Bearer new-key-2"}) == 200
        assert _score(first.port, {"Authorization": "Bearer old-key-1"}) == 401
    finally:
        first.kill()
        for p in procs:
            if p.is_running():
                kill_tree(p.pid)
        if second is not None:
            second.kill()


class _Foreign(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def foreign_server() -> Iterator[int]:
    """Something else answering 200 on /readyz (as an orphaned old worker would)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Foreign)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_start_on_a_busy_port_fails_instead_of_reporting_ready(
    state: State, foreign_server: int
) -> None:
    serve = _serve(state, state.env, port=foreign_server)
    try:
        rc = serve.proc.wait(READY_TIMEOUT_S)
        time.sleep(0.3)
    finally:
        serve.kill()
    assert rc != 0
    assert "ready:" not in serve.text
    assert f"error: port {foreign_server} on 127.0.0.1 is already in use" in serve.text


def test_wait_ready_rejects_a_server_that_is_not_ours(foreign_server: int) -> None:
    from cshealth.cli import _wait_ready
    from cshealth.errors import UserError

    class Running:
        def poll(self) -> None:
            return None

    with pytest.raises(UserError, match="another server"):
        _wait_ready(f"http://127.0.0.1:{foreign_server}/readyz", Running(), "abc", timeout=10)


# ----- 7: a blank key ----------------------------------------------------------------------
def test_blank_key_is_a_one_line_error(state: State) -> None:
    env = {**state.env, **_private_bentoml(state), "CSHEALTH_API_KEY": "   "}
    port = free_port()
    cli = subprocess.run([str(CLI), "--params", str(state.setup.params), "serve", "--port",
                          str(port)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert cli.returncode != 0
    assert cli.stderr.strip().count("\n") == 0, cli.stderr
    assert cli.stderr.startswith("error: CSHEALTH_API_KEY: blank"), cli.stderr
    assert not port_in_use("127.0.0.1", port)
    bento = subprocess.run([str(BENTOML), "serve", "serving.service:HealthService", "--port",
                            str(port)], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    out = bento.stdout + bento.stderr
    assert bento.returncode != 0
    assert "Traceback" not in out, out
    assert "error: CSHEALTH_API_KEY: blank" in out


# ----- 10: hygiene -------------------------------------------------------------------------
def test_rejected_request_logs_one_line_without_the_input(state: State) -> None:
    srv = state.server
    secret = "INPUT-" + "z" * 2000
    r = srv.post("/score", {"account_ids": secret})
    assert r.status_code == 400
    time.sleep(1)  # the log is written by another process
    log = srv.tail(10**7)
    assert "Traceback" not in log
    assert secret[:100] not in log
    assert re.search(r"rejected POST /score: 400 .*account_ids", log), log[-2000:]


def test_control_characters_in_a_path_cannot_forge_log_lines(state: State) -> None:
    srv = state.server
    httpx.get(f"{srv.url}/x%0aFORGED-LINE%0d%1b[31m", timeout=10)
    httpx.get(f"{srv.url}/readyz%0aFORGED-LINE", headers=AUTH, timeout=10)
    time.sleep(1)
    lines = srv.tail(10**7).splitlines()
    assert not [ln for ln in lines if ln.startswith("FORGED-LINE")]
    assert any("\\nFORGED-LINE" in ln for ln in lines)
    assert not any("\x1b" in ln for ln in lines)


@pytest.mark.parametrize(
    ("path", "body"),
    [("/score", {"account_ids": ["a"], "bogus": 1}),
     ("/score_features", {"rows": [{}], "bogus": 1}),
     ("/model_info", {"bogus": 1})],
)  # fmt: skip
def test_unknown_top_level_field_is_422_naming_it(state: State, path: str, body: dict) -> None:
    r = state.server.post(path, body)
    assert r.status_code == 422, r.text
    data = r.json()
    assert "bogus" in data["error"]
    assert data["detail"][0]["loc"] == ["bogus"]


def _raw(port: int, head: bytes, chunks: Iterator[bytes] | None = None) -> bytes:
    """Send `head` then `chunks` until the server answers; the answer's first bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(head)
        s.setblocking(False)
        answer = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                answer += s.recv(65536)
                if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                    return answer
            except BlockingIOError:
                pass
            except ConnectionError:
                return answer
            chunk = next(chunks, None) if chunks is not None else None
            if chunk is not None:
                try:
                    s.sendall(chunk)
                except (BlockingIOError, ConnectionError):
                    time.sleep(0.05)
            else:
                time.sleep(0.05)
        return answer


def test_body_size_is_capped_for_authenticated_clients(state: State) -> None:
    port = state.server.port
    auth = f"Authorization: Bearer {KEY}\r\n".encode()
    head = (b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth
            + b"Content-Length: 150000000\r\n\r\n")  # fmt: skip
    answer = _raw(port, head)  # no body sent: refused on the declared length
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"max_body_bytes=" in answer

    def chunks() -> Iterator[bytes]:
        piece = b"x" * 65536
        for _ in range(200):  # 13 MB at most, ten times the limit
            yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"

    head = (b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth
            + b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
    answer = _raw(port, head, chunks())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"max_body_bytes=" in answer
    ok = state.server.post("/score", {"account_ids": state.setup.ids[:2]})
    assert ok.status_code == 200  # ordinary requests are untouched


def test_serve_banner_redacts_the_mlflow_uri(state: State, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    import subprocess as sp

    from cshealth import cli

    class FakeProc:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def poll(self) -> int | None:
            return None

        def wait(self, timeout: float | None = None) -> int:
            return 0

        def terminate(self) -> None:
            pass

    monkeypatch.setattr(sp, "Popen", FakeProc)
    monkeypatch.setattr(cli, "_wait_ready", lambda *a, **k: True)
    monkeypatch.setattr(cli, "_example_account", lambda args, cfg: "a-1")
    monkeypatch.setenv("CSHEALTH_API_KEY", "k")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://ml:s3cr3t-pw@db:5432/mlflow")
    monkeypatch.setattr(signal, "signal", lambda *a: None)
    rc = cli.main(["--params", str(state.setup.params), "serve", "--port", str(free_port())])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "MLflow:" in out.out
    assert "s3cr3t-pw" not in out.out + out.err
