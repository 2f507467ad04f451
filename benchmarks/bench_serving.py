"""Benchmark the HTTP service: cold start, single-account latency and throughput, batches.

Targets on 2 cores (issue 11, with the richer explanations: reasons with peer values,
expansion reasons, context, plays, changes; issue 5's were 50 ms / 300 req/s / 500 ms):
single-account /score p99 <= 25 ms at 8 concurrent clients, >= 500 single-account
requests/s, a 1,000-id batch <= 200 ms (p95), zero errors, cold start to ready <= 15 s.

What it does (all in a temporary folder, nothing in the repository is touched):

1. prepares demo-size data: simulates ``--accounts`` accounts x ``--months`` months, builds
   the snapshot table, trains both models, registers them in a temporary MLflow registry
   (SQLite) as champions, and batch-scores the newest snapshot into a temporary SQLite
   store (explanations included, as `cshealth score` does);
2. starts ``bentoml serve serving.service:HealthService`` on 127.0.0.1 and times the cold
   start (process start to the first 200 from ``/readyz``);
3. drives load from a separate process (one asyncio client with N keep-alive
   connections, each sending its next request when the previous answer arrived):
   single-account ``/score`` requests at 1, 8 and 32 concurrent clients for ``--seconds``
   each, sequential 1,000-id ``/score`` batches, and single-row ``/score_features``
   requests at 8 clients (not a target; for information), and the account look-ups a CSM
   tool makes at 8 clients: ``GET /accounts?band=red`` (a page of 100, lowest health
   first) and ``GET /accounts/{id}/history`` (for information);
4. scores the store a second time (one more run, so that every account has ``changes``
   and a two-run history) before the load phases;
5. reads the service's own Prometheus histogram of requests per scoring batch.

Usage: python benchmarks/bench_serving.py [--seconds 10] [--workers 1] [--no-batching]
           [--accounts 1800] [--months 24] [--name serving] [--server-log FILE]
           [--bento TAG|build] [--only-single]
Writes benchmarks/results/<name>.json.

``--bento TAG`` serves a built Bento (``bentoml serve TAG`` from a folder outside the
repository, the Bento from the caller's BENTOML_HOME) instead of the source service;
``--bento build`` first runs ``bentoml build`` into the benchmark's temporary BENTOML_HOME
(timed) and serves that; results default to ``serving_bento.json``. ``--only-single`` runs
only the cold start and the single-account /score phases. The comparisons kept in
results/ were run with ``--no-batching --name serving_no_batching``, ``--workers 2 --name
serving_2_workers`` and ``CSHEALTH_BENTOML_TIMER_FIX=0 ... --name serving_without_timer_fix``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result

REPO = Path(__file__).resolve().parents[1]
API_KEY = "bench-key"
BATCH_IDS = 1000


# ----- the load client (runs in its own process) ---------------------------------------------
async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])
               if k}  # fmt: skip
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    body = b""
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, body
        body += chunk[:-2]


def _request(path: str, body: bytes | None) -> bytes:
    """A keep-alive request: POST with a JSON body, or GET (`body` None)."""
    if body is None:
        return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {API_KEY}\r\n\r\n").encode()  # fmt: skip
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _check(status: int, body: bytes, expect_results: int) -> str | None:
    """None if fine: 200 and (expect_results >= 0) that many results and no errors, or
    (expect_results < 0: a GET) a JSON object with results or runs."""
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    data = json.loads(body)
    if expect_results < 0:
        return None if data.get("results") or data.get("runs") else f"empty: {body[:200]!r}"
    if data["errors"] or len(data["results"]) != expect_results:
        return f"{len(data['results'])} results, errors {data['errors'][:2]}"
    return None


async def _connection(port: int, requests: list[tuple[bytes, int]], stop_at: float,
                      limit: int | None, out: dict) -> None:  # fmt: skip
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = random.randrange(len(requests))
    try:
        while time.perf_counter() < stop_at and (limit is None or out["sent"] < limit):
            req, expect = requests[i % len(requests)]
            i += 1
            out["sent"] += 1
            t0 = time.perf_counter()
            writer.write(req)
            try:
                status, body = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError) as err:
                out["errors"].append(f"connection: {err!r}")
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            out["latencies"].append(time.perf_counter() - t0)
            problem = _check(status, body, expect)
            if problem:
                out["errors"].append(problem)
    finally:
        writer.close()


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s)) - 1))]


def run_client(spec: dict) -> dict:
    """One load phase: `concurrency` connections for `seconds` (or `limit` requests)."""
    if "gets" in spec:  # GET paths (no body)
        requests = [(_request(path, None), -1) for path in spec["gets"]]
    else:
        requests = [(_request(spec["path"], b.encode()), n) for b, n in spec["bodies"]]
    out: dict = {"latencies": [], "errors": [], "sent": 0}

    async def main() -> float:
        stop_at = time.perf_counter() + spec["seconds"]
        t0 = time.perf_counter()
        await asyncio.gather(*(
            _connection(spec["port"], requests, stop_at, spec.get("limit"), out)
            for _ in range(spec["concurrency"])
        ))  # fmt: skip
        return time.perf_counter() - t0

    warm = dict(out, latencies=[], errors=[], sent=0)
    asyncio.run(_warm(spec, requests, warm))
    wall = asyncio.run(main())
    lat = [x * 1000 for x in out["latencies"]]
    return {
        "concurrency": spec["concurrency"],
        "requests": len(lat),
        "seconds": round(wall, 2),
        "requests_per_s": round(len(lat) / wall, 1),
        "p50_ms": round(_pct(lat, 50), 2),
        "p95_ms": round(_pct(lat, 95), 2),
        "p99_ms": round(_pct(lat, 99), 2),
        "max_ms": round(max(lat), 2),
        "errors": len(out["errors"]),
        "error_examples": out["errors"][:3],
    }


async def _warm(spec: dict, requests: list[tuple[bytes, int]], out: dict) -> None:
    """A short untimed warm-up on the same connections count (JIT-free, but caches, pools)."""
    stop_at = time.perf_counter() + min(1.0, spec["seconds"])
    await asyncio.gather(*(_connection(spec["port"], requests, stop_at, 200, out)
                           for _ in range(spec["concurrency"])))  # fmt: skip


def client_phase(spec: dict) -> dict:
    """Run `run_client(spec)` in a separate process (the load must not share our GIL)."""
    proc = subprocess.run([sys.executable, __file__, "--client"], input=json.dumps(spec),
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"load client failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


# ----- preparation -----------------------------------------------------------------------
def prepare(root: Path, accounts: int, months: int) -> tuple[dict[str, str], list[str], list]:
    """Data, registry and store in `root`; returns (env, scored ids, feature rows)."""
    from cshealth.config import load_config
    from features.pipeline import build_snapshots
    from serving.batch import newest_rows, score_latest
    from serving.predictor import ModelPair, Scorer
    from serving.store import ScoreStore
    from simulator import generate, write_dataset
    from training import tracking
    from training.settings import Gates
    from training.train import SnapshotTable, train

    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "CSHEALTH_DB_URL": f"sqlite:///{root / 'scores.db'}",
        "CSHEALTH_PARAMS": str(REPO / "params.yaml"),
        "CSHEALTH_API_KEY": API_KEY,
    }
    os.environ.update(env)
    cfg = load_config(REPO / "params.yaml")
    t0 = time.perf_counter()
    sim = generate(accounts, months, cfg.simulator.seed, cfg.simulator.start, truth_samples=5)
    write_dataset(sim, root / "raw", None)
    snap_file = root / "snapshots.parquet"
    build_snapshots(root / "raw", cfg.features).write(snap_file)
    snaps = SnapshotTable.read(snap_file)
    result = train(snaps, cfg.train, list(cfg.rules))
    # gates relaxed: the benchmark needs champions, whatever their quality
    tracking.log_training(result, snaps, snap_file, config=cfg.model_dump(mode="json"),
                          gates=Gates(min_auc=0, max_ece=1, tolerance=1))  # fmt: skip
    churn, cv = tracking.load_champion("churn")
    expansion, ev = tracking.load_champion("expansion")
    scorer = Scorer(ModelPair(churn, expansion, str(cv), str(ev)), cfg.health, cfg.explanations)
    store = ScoreStore(env["CSHEALTH_DB_URL"])
    # two runs: the second one's items carry `changes` (as after a week of `cshealth score`)
    dates = sorted(snaps.frame["as_of"].unique())
    previous = snaps.frame[snaps.frame["as_of"] < dates[-1]]
    score_latest(previous, scorer, store, dt.datetime.now(dt.UTC) - dt.timedelta(days=30))
    summary = score_latest(snaps.frame, scorer, store, dt.datetime.now(dt.UTC))
    ids = sorted(store.latest_scores(newest_rows(snaps.frame)["account_id"].tolist()))
    rows = [{"account_id": f["account_id"], "as_of": f["as_of"], **f["features"]}
            for f in store.features(ids[:200]).values()]  # fmt: skip
    store.close()
    print(f"prepared {summary['accounts']} scored accounts in {time.perf_counter() - t0:.0f} s",
          flush=True)  # fmt: skip
    return env, ids, rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SOURCE_SERVICE = "serving.service:HealthService"


def build_bento(env: dict[str, str]) -> tuple[str, float]:
    """`bentoml build` from the repository root (BENTOML_HOME from `env`): (tag, seconds)."""
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    t0 = time.perf_counter()
    proc = subprocess.run([bentoml, "build", "-o", "tag"], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"bentoml build failed:\n{proc.stderr[-3000:]}")
    tag = next(ln.removeprefix("__tag__:") for ln in proc.stdout.splitlines()
               if ln.startswith("__tag__:"))  # fmt: skip
    return tag, time.perf_counter() - t0


def start_server(env: dict[str, str], port: int, log_file: Path, timeout: float = 60,
                 target: str = SOURCE_SERVICE,
                 cwd: Path = REPO) -> tuple[subprocess.Popen, float]:  # fmt: skip
    """`bentoml serve target` (the source service, or a Bento's tag) in `cwd`."""
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [bentoml, "serve", target, "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd, env=env, stdout=log_file.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            tail = log_file.read_text()[-3000:]
            raise RuntimeError(f"server exited ({proc.returncode}):\n{tail}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc, time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.05)
    stop_server(proc)
    raise RuntimeError(f"not ready in {timeout} s:\n{log_file.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def batch_histogram(port: int) -> dict[str, float]:
    """Mean requests per scoring batch, per endpoint, from /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for ep in ("score", "score_features"):
        vals = {}
        for kind in ("sum", "count"):
            m = re.search(rf'^cshealth_batch_requests_{kind}{{endpoint="{ep}"}} (\S+)$', text, re.M)
            vals[kind] = float(m.group(1)) if m else 0.0
        if vals["count"]:
            out[ep] = round(vals["sum"] / vals["count"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=10.0, help="per load phase")
    ap.add_argument("--clients", default="1,8,32", help="concurrency levels")
    ap.add_argument("--batches", type=int, default=20, help="1,000-id requests to time")
    ap.add_argument("--workers", type=int, default=1, help="CSHEALTH_WORKERS")
    ap.add_argument("--no-batching", action="store_true", help="CSHEALTH_MICROBATCH=0")
    ap.add_argument("--accounts", type=int, default=1800, help="simulated accounts")
    ap.add_argument("--months", type=int, default=24)
    ap.add_argument("--name", help="results file name (serving, or serving_bento with --bento)")
    ap.add_argument("--server-log", type=Path, help="keep the server's log here")
    ap.add_argument("--bento", metavar="TAG|build",
                    help="serve this built Bento (build: run bentoml build first)")  # fmt: skip
    ap.add_argument("--only-single", action="store_true",
                    help="only the cold start and the single-account /score phases")  # fmt: skip
    args = ap.parse_args()
    if args.client:
        print(json.dumps(run_client(json.load(sys.stdin))))
        return
    run(args)


def serve_target(args: argparse.Namespace, env: dict[str, str], root: Path) -> dict:
    """What to serve, from where, with which BENTOML_HOME (a Bento: built first if asked)."""
    if not args.bento:
        return {"target": SOURCE_SERVICE, "cwd": REPO, "env": env}
    if args.bento != "build":  # an existing Bento: the caller's BENTOML_HOME
        env = {k: v for k, v in env.items() if k != "BENTOML_HOME"}
        if os.environ.get("BENTOML_HOME"):
            env["BENTOML_HOME"] = os.environ["BENTOML_HOME"]
        return {"target": args.bento, "cwd": root, "env": env}
    tag, build_s = build_bento(env)
    print(f"bentoml build: {tag} in {build_s:.1f} s", flush=True)
    return {"target": tag, "cwd": root, "env": env, "build_s": round(build_s, 2)}


def run(args: argparse.Namespace) -> None:
    """Prepare, serve, load, write the results (see the module doc)."""
    name = args.name or ("serving_bento" if args.bento else "serving")

    env_base = {**os.environ, "DO_NOT_TRACK": "true", "BENTOML_DO_NOT_TRACK": "true",
                "PYTHONUNBUFFERED": "1"}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        root = Path(tmp)
        env, ids, rows = prepare(root, args.accounts, args.months)
        env = {**env_base, **env, "BENTOML_HOME": str(root / "bentoml"),
               "CSHEALTH_WORKERS": str(args.workers),
               "CSHEALTH_MICROBATCH": "0" if args.no_batching else "1"}  # fmt: skip
        serve = serve_target(args, env, root)
        port = free_port()
        proc, cold = start_server(serve["env"], port, root / "server.log",
                                  target=serve["target"], cwd=serve["cwd"])  # fmt: skip
        batch, features, lookups, per_batch = None, None, {}, {}
        try:
            print(f"cold start to ready: {cold:.2f} s", flush=True)
            single = [(json.dumps({"account_ids": [a]}), 1) for a in ids]
            phases = []
            for c in (int(x) for x in args.clients.split(",")):
                res = client_phase({"port": port, "path": "/score", "bodies": single,
                                    "concurrency": c, "seconds": args.seconds})  # fmt: skip
                phases.append(res)
                print(f"/score 1 id x {c} clients: {res}", flush=True)
            if args.only_single:
                return finish(args, name, serve, ids, cold, phases)
            n = min(BATCH_IDS, len(ids))
            batch_bodies = [(json.dumps({"account_ids": random.Random(i).sample(ids, n)}), n)
                            for i in range(5)]  # fmt: skip
            batch = client_phase({"port": port, "path": "/score", "bodies": batch_bodies,
                                  "concurrency": 1, "seconds": 120,
                                  "limit": args.batches})  # fmt: skip
            batch["ids_per_request"] = n
            print(f"/score {n} ids: {batch}", flush=True)
            feature_bodies = [(json.dumps({"rows": [r]}), 1) for r in rows]
            features = client_phase({"port": port, "path": "/score_features",
                                     "bodies": feature_bodies, "concurrency": 8,
                                     "seconds": min(args.seconds, 5)})  # fmt: skip
            print(f"/score_features 1 row x 8 clients: {features}", flush=True)
            lookups = {}
            pages = ["/accounts?band=red"]
            histories = [f"/accounts/{a}/history" for a in ids]
            for name, gets in (("accounts_red", pages), ("history", histories)):
                lookups[name] = client_phase({"port": port, "gets": gets, "concurrency": 8,
                                              "seconds": min(args.seconds, 5)})  # fmt: skip
                print(f"GET {gets[0]} x 8 clients: {lookups[name]}", flush=True)
            per_batch = batch_histogram(port)
        finally:
            stop_server(proc)
            if args.server_log:
                args.server_log.write_text((root / "server.log").read_text())
    finish(args, name, serve, ids, cold, phases, batch, features, lookups, per_batch)


def finish(args: argparse.Namespace, name: str, serve: dict, ids: list[str], cold: float,
           phases: list[dict], batch: dict | None = None, features: dict | None = None,
           lookups: dict | None = None, per_batch: dict | None = None) -> None:  # fmt: skip
    """Check the targets and write results/<name>.json (phases not run are left out)."""
    lookups = lookups or {}
    at8 = next((p for p in phases if p["concurrency"] == 8), None)
    best_rps = max(p["requests_per_s"] for p in phases)
    ran = [*phases, *(p for p in (batch, features) if p), *lookups.values()]
    checks = {
        "p99_ms_at_8_clients<=25": at8 is not None and at8["p99_ms"] <= 25,
        "single_account_rps>=500": best_rps >= 500,
        "zero_errors": sum(p["errors"] for p in ran) == 0,
        "cold_start_s<=15": cold <= 15,
    }
    if batch is not None:
        checks["batch_1000_p95_ms<=200"] = batch["p95_ms"] <= 200
    results = {
        "score_single": phases,
        "score_batch": batch,
        "score_features_single_row": features,
        "accounts_red_page": lookups.get("accounts_red"),
        "account_history": lookups.get("history"),
        "mean_requests_per_batch": per_batch,
    }
    write_result(name, {
        "config": {"workers": args.workers, "micro_batching": not args.no_batching,
                   "seconds_per_phase": args.seconds, "accounts_scored": len(ids),
                   "served": serve["target"], "only_single": args.only_single},
        **({"bento_build_s": serve["build_s"]} if "build_s" in serve else {}),
        "cold_start_s": round(cold, 2),
        **{k: v for k, v in results.items() if v is not None},
        "targets": {"p99_ms_at_8_clients": "<= 25", "single_account_requests_per_s": ">= 500",
                    "batch_1000_ms": "<= 200", "errors": 0, "cold_start_s": "<= 15"},
        "met": checks,
    })  # fmt: skip


if __name__ == "__main__":
    main()
