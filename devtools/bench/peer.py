"""Peer: the scheduled-execution workload of lateness.py run by procrastinate, next to AT's engine.

    python -m devtools.bench peer                               # part of `make bench`
    python -m devtools.bench.peer --tasks 2000 --processes 1    # one configuration, JSON out
    python -m devtools.bench.peer --tasks 2000 --skip-at --polling-interval 0.5

procrastinate (a PostgreSQL task queue for Python) gets its own schema in its own database on the
same PostgreSQL server as AT (an embedded, durable one unless DB_HOST is set). Its jobs are
deferred up front with procrastinate's batch defer, `schedule_at` spread evenly over
[T0, T0 + window] with T0 = now + lead, in the order they fall due, as AT's tasks are inserted;
its workers (`App.run_worker_async`, `concurrency` jobs at a time each) are separate processes,
started before the deferring, as AT's engines are. The job POSTs to the same callback sink
(sink.py) with X-AT-Task-Id = the job's id, over keep-alive connections (asyncio streams, one
pool per worker process). AT's side is lateness.run_scenario(create="sql") on the same server with the
same task count, window and lead. Lateness is the sink's arrival time minus the scheduled time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pg8000.exceptions
import pg8000.native

from devtools.bench import lateness
from devtools.bench.common import ROOT, _server, environment, load_average, machine_facts, table

TASK_NAME = "at_bench_peer_callback"
CONNINFO_ENV = "AT_BENCH_PEER_CONNINFO"  # how a worker process learns its database
WINDOW_S = 60.0
CONCURRENCY = 32  # jobs at a time per worker process, as AT's engine runs 32 worker threads
# procrastinate's worker wakes on NOTIFY only when a job is *inserted*; a job that falls due later
# waits for the next poll, so fetch_job_polling_interval is its lever on lateness for scheduled
# jobs. Short trial runs (5,000-10,000 jobs over 30-60 s) gave the best p50 and p95 with one poll
# per 12.5 ms across all worker processes together: 12.5 ms with 1 process, 50 ms with 4 (there
# 10 ms made p50 barely better and p95/p99 several times worse). Each empty poll scans the todo
# jobs (measured: 4 ms with 10,000 waiting, 30 ms with 100,000), so shorter is not free.
POLLING_INTERVAL_PER_PROCESS_S = 0.0125
DEFER_BATCH = 5_000  # jobs per batch-defer statement
FULL = ((10_000, 1), (10_000, 4), (100_000, 1), (100_000, 4))  # (tasks, processes)
QUICK = ((2_000, 1),)

LOG = logging.getLogger(__name__)


def polling_interval_for(processes: int) -> float:
    return POLLING_INTERVAL_PER_PROCESS_S * processes


def lead_for(tasks: int) -> float:
    """Seconds from the start of deferring to the first due time: covers procrastinate's deferring."""
    return 15.0 + tasks / 2_000


# --- the procrastinate side: app, task, worker process ------------------------------------------


def make_app(conninfo: str, pool_size: int) -> Any:
    import procrastinate

    connector = procrastinate.PsycopgConnector(conninfo=conninfo, min_size=min(4, pool_size), max_size=pool_size)
    app = procrastinate.App(connector=connector)
    app.task(name=TASK_NAME, pass_context=True)(callback)
    return app


class KeepAliveClient:
    """HTTP/1.1 POSTs over a pool of persistent asyncio connections to one host."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, target: str, headers: dict[str, str], body: bytes) -> int:
        head = f"POST {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = (head + f"Content-Length: {len(body)}\r\n\r\n").encode("ascii") + body
        reused = bool(self._idle)
        connection = self._idle.pop() if reused else await asyncio.open_connection(self.host, self.port)
        try:
            status = await self._round_trip(connection, request)
        except (OSError, asyncio.IncompleteReadError):
            connection[1].close()
            if not reused:
                raise
            connection = await asyncio.open_connection(self.host, self.port)  # the idle one had gone stale
            try:
                status = await self._round_trip(connection, request)
            except BaseException:
                connection[1].close()
                raise
        except BaseException:
            connection[1].close()
            raise
        self._idle.append(connection)
        return status

    @staticmethod
    async def _round_trip(connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes) -> int:
        reader, writer = connection
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await reader.readexactly(length)
        return status


_clients: dict[tuple[str, int], KeepAliveClient] = {}


async def callback(context: Any, url: str, data: dict[str, Any]) -> int:
    """The job: what AT's http_callback executor sends, to the same sink."""
    parts = urlsplit(url)
    key = (parts.hostname or "127.0.0.1", parts.port or 80)
    client = _clients.get(key) or _clients.setdefault(key, KeepAliveClient(*key))
    job = context.job
    headers = {"User-Agent": "at-bench-peer", "Accept": "*/*", "Content-Type": "application/json",
               "Idempotency-Key": f"peer-job-{job.id}", "X-AT-Task-Id": str(job.id),
               "X-AT-Attempt": str(job.attempts + 1)}  # fmt: skip
    status = await client.post(parts.path or "/", headers, json.dumps(data).encode())
    if not 200 <= status < 300:
        raise RuntimeError(f"callback returned HTTP {status}")
    return status


async def _work(conninfo: str, concurrency: int, polling_interval: float, name: str) -> None:
    app = make_app(conninfo, pool_size=concurrency)
    async with app.open_async():
        await app.run_worker_async(concurrency=concurrency, fetch_job_polling_interval=polling_interval,
                                   listen_notify=True, name=name, install_signal_handlers=True)  # fmt: skip


# --- the benchmark driver ------------------------------------------------------------------------


@dataclass
class Server:
    host: str
    port: int
    user: str
    password: str | None
    admin_db: str

    def connect(self, database: str | None = None) -> pg8000.native.Connection:
        return pg8000.native.Connection(user=self.user, host=self.host, port=self.port, password=self.password,
                                        database=database or self.admin_db)  # fmt: skip

    def conninfo(self, database: str) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(host=self.host, port=self.port, user=self.user, password=self.password or None,
                             dbname=database)  # fmt: skip

    def db_env(self) -> dict[str, str]:
        """DB_* for lateness.Stack: it creates its own database on this server."""
        env = {"DB_HOST": self.host, "DB_PORT": str(self.port), "DB_USER": self.user, "DB_NAME": self.admin_db}
        if self.password:
            env["DB_PASSWORD"] = self.password
        return env

    def admin(self, sql: str) -> None:
        conn = self.connect()
        try:
            conn.run(sql)
        finally:
            conn.close()

    def checkpoint(self) -> None:
        """Flush the previous run's dirty pages now rather than during the next run's window."""
        with contextlib.suppress(pg8000.exceptions.DatabaseError):  # needs superuser or pg_checkpoint
            self.admin("CHECKPOINT")


@contextlib.contextmanager
def _processes() -> Iterator[list[subprocess.Popen]]:
    processes: list[subprocess.Popen] = []
    try:
        yield processes
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _start_sink(processes: list[subprocess.Popen], tmp: Path) -> tuple[subprocess.Popen, Path, str]:
    out, ready = tmp / "arrivals.jsonl", tmp / "sink.port"
    sink = subprocess.Popen([sys.executable, "-m", "devtools.bench.sink", "--out", str(out), "--ready-file",
                             str(ready)], cwd=ROOT)  # fmt: skip
    processes.append(sink)
    deadline = time.monotonic() + 30
    while not ready.exists() or not ready.read_text():
        if sink.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("callback sink did not start")
        time.sleep(0.05)
    return sink, out, f"http://127.0.0.1:{ready.read_text()}/callback"


def _wait_for_workers(conn: pg8000.native.Connection, workers: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 60
    while conn.run("SELECT count(*) FROM procrastinate_workers")[0][0] < len(workers):
        if any(worker.poll() is not None for worker in workers) or time.monotonic() > deadline:
            raise RuntimeError("procrastinate workers did not start")
        time.sleep(0.1)


async def _defer(conninfo: str, tasks: int, start_of_window: datetime, window: float, sink_url: str) -> None:
    """All jobs, in the order they fall due, through procrastinate's batch defer; job i (1..N) is due at
    start + window * i / N, as lateness.create_over_sql spaces AT's tasks."""
    app = make_app(conninfo, pool_size=2)
    async with app.open_async():
        task = app.tasks[TASK_NAME]
        for start in range(1, tasks + 1, DEFER_BATCH):
            jobs = [task.configure(schedule_at=start_of_window + timedelta(seconds=window * i / tasks))
                    .make_new_job(url=sink_url, data={"bench": True})
                    for i in range(start, min(start + DEFER_BATCH, tasks + 1))]  # fmt: skip
            await app.job_manager.batch_defer_jobs_async(jobs)


def _apply_schema(conninfo: str) -> None:
    async def apply() -> None:
        app = make_app(conninfo, pool_size=1)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    asyncio.run(apply())


def run_procrastinate(server: Server, tasks: int, processes: int, window: float, lead: float,
                      polling_interval: float, concurrency: int = CONCURRENCY) -> dict[str, Any]:  # fmt: skip
    database = f"at_bench_peer_{uuid.uuid4().hex[:8]}"
    server.admin(f"CREATE DATABASE {pg8000.native.identifier(database)}")
    tmp = Path(tempfile.mkdtemp(prefix="at-bench-peer-"))
    conninfo = server.conninfo(database)
    try:
        _apply_schema(conninfo)
        conn = server.connect(database)
        try:
            with _processes() as children:
                sink, sink_out, sink_url = _start_sink(children, tmp)
                env = os.environ | {CONNINFO_ENV: conninfo}  # not on the command line: it may hold a password
                workers = [subprocess.Popen([sys.executable, "-m", "devtools.bench.peer", "--worker", "--concurrency",
                                             str(concurrency), "--polling-interval", str(polling_interval), "--name",
                                             f"peer-{n}"], cwd=ROOT, env=env)
                           for n in range(processes)]  # fmt: skip
                children.extend(workers)
                _wait_for_workers(conn, workers)
                began = time.time()
                asyncio.run(_defer(conninfo, tasks, datetime.fromtimestamp(began + lead, UTC), window, sink_url))
                deferred = time.time()
                conn.run("ANALYZE procrastinate_jobs")  # as lateness.py analyzes scheduled_tasks
                _wait_until_done(conn, tasks, workers, timeout=lead + window + 300)
                time.sleep(1.0)  # let a (wrong) duplicate show up
                for worker in workers:
                    worker.send_signal(signal.SIGTERM)  # procrastinate's graceful stop
                for worker in workers:
                    worker.wait(60)
                sink.terminate()
                sink.wait(30)
                arrivals = [tuple(json.loads(line)) for line in sink_out.read_text().splitlines()]
            rows = conn.run("SELECT id, extract(epoch FROM scheduled_at)::float8, status::text FROM procrastinate_jobs")
        finally:
            conn.close()
    finally:
        with contextlib.suppress(pg8000.exceptions.DatabaseError):
            server.admin(f"DROP DATABASE IF EXISTS {pg8000.native.identifier(database)} WITH (FORCE)")
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"defer_s": deferred - began, "defer_overran_s": max(0.0, deferred - began - lead)}
    completed = sum(1 for row in rows if row[2] == "succeeded")
    return result | lateness.summarize(tasks, {row[0]: row[1] for row in rows}, completed, arrivals)


def _wait_until_done(conn: pg8000.native.Connection, tasks: int, workers: list[subprocess.Popen],
                     timeout: float) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and all(worker.poll() is None for worker in workers):
        done = conn.run("SELECT count(*) FROM procrastinate_jobs WHERE status IN ('succeeded', 'failed')")[0][0]
        if done >= tasks:
            return
        time.sleep(0.5)
    LOG.warning("procrastinate did not finish all %d jobs in time", tasks)


def run_at(server: Server, tasks: int, processes: int, window: float, lead: float) -> dict[str, Any]:
    """AT's engine on the same server, through lateness.run_scenario (its own database, sink and local run)."""
    with environment(server.db_env()):
        try:
            return lateness.run_scenario(tasks=tasks, window=window, dispatchers=processes, workers=CONCURRENCY,
                                         create="sql", lead=lead)  # fmt: skip
        finally:  # lateness.Stack leaves the database it made on a DB_HOST server behind
            with contextlib.suppress(pg8000.exceptions.DatabaseError):
                server.admin(f'DROP DATABASE IF EXISTS "at_bench_{os.getpid()}" WITH (FORCE)')


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    names = ("procrastinate", "psycopg", "psycopg.pool")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def measure(configs: tuple[tuple[int, int], ...], window: float, polling_interval: float | None = None,
            skip_at: bool = False) -> tuple[list[dict[str, Any]], str, str, str]:  # fmt: skip
    """Per configuration, AT then procrastinate; returns the results, server version, where, machine facts."""
    results: list[dict[str, Any]] = []
    with _quiet_libraries(), _server() as (host, port, user, password, admin_db, where):
        server = Server(host, port, user, password, admin_db)
        conn = server.connect()
        version = str(conn.run("SHOW server_version")[0][0])
        conn.close()
        facts = machine_facts(version)
        for tasks, processes in configs:
            lead = lead_for(tasks)
            common = {"processes": processes, "concurrency": CONCURRENCY, "window_s": window, "lead_s": lead}
            if not skip_at:
                server.checkpoint()
                print(f"-- AT: {tasks} tasks, {processes} engine process(es)", flush=True)
                results.append({"engine": "AT"} | common | run_at(server, tasks, processes, window, lead))
            server.checkpoint()
            print(f"-- procrastinate: {tasks} tasks, {processes} worker process(es)", flush=True)
            interval = polling_interval or polling_interval_for(processes)
            results.append({"engine": "procrastinate", "polling_interval_s": interval} | common
                           | run_procrastinate(server, tasks, processes, window, lead, interval))  # fmt: skip
    return results, version, where, facts


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _defer_cell(result: dict[str, Any]) -> str:
    if "defer_s" not in result:
        return "-"
    overran = result["defer_overran_s"]
    return f"{result['defer_s']:.1f} s" + (f" (overran the lead by {overran:.1f} s)" if overran else "")


def _versions() -> str:
    return ", ".join(f"{name} {importlib.metadata.version(name)}" for name in ("procrastinate", "psycopg",
                                                                                 "psycopg-pool"))  # fmt: skip


def markdown(results: list[dict[str, Any]], version: str, where: str, window: float,
             facts: str, load_at_end: str, elapsed: float) -> str:  # fmt: skip
    rows = []
    for r in results:
        who = f"AT engine, {r['processes']} x {r['concurrency']}"
        if r["engine"] != "AT":
            who = f"procrastinate, {r['processes']} x {r['concurrency']}, poll {r['polling_interval_s'] * 1000:g} ms"
        rows.append([f"{r['tasks']:,}", who, r["lost"], r["duplicates"],
                     _seconds(r["lateness_p50"]), _seconds(r["lateness_p95"]), _seconds(r["lateness_p99"]),
                     _seconds(r["lateness_max"]), f"{r['throughput_per_s']:.0f}", _defer_cell(r)])  # fmt: skip
    headers = ["tasks", "engine, processes x concurrency", "lost", "dup", "lateness p50", "p95", "p99", "max",
               "tasks/s", "procrastinate defer time"]  # fmt: skip
    return f"""## Peer: procrastinate

{facts}

The scheduled-execution workload of `devtools/bench/lateness.py` (`--create sql`) run by AT's engine
and by [procrastinate](https://procrastinate.readthedocs.io/) ({_versions()}), one after the other on
the same PostgreSQL {version} ({where}), each in its own database (procrastinate's own schema,
applied by its schema manager). Per row: N tasks due evenly over a {window:.0f} s window starting at
now + lead (lead = 15 s + N / 2,000 s, the same for both), each an HTTP POST to the same callback sink
(`devtools/bench/sink.py`, its own process, keep-alive, 200 to all), which records the arrival time;
lateness is arrival - due time, throughput is tasks / (last first arrival - first first arrival).
A CHECKPOINT precedes every run. The measured part took {elapsed / 60:.0f} min; load average at its end:
{load_at_end}.

- **AT**: `lateness.run_scenario(create="sql")`: tasks inserted in one statement, `python -m devtools.run`
  with AT_DISPATCHERS engine processes of AT_WORKERS=32 threads each, http_callback executor
  (persistent `http.client` connections).
- **procrastinate**: jobs deferred up front with its batch defer (`JobManager.batch_defer_jobs_async`,
  {DEFER_BATCH:,} jobs a statement, `schedule_at` per job, in due order), by the benchmark process while the
  workers already run; worker processes of `App.run_worker_async(concurrency=32,
  listen_notify=True, fetch_job_polling_interval=...)`, each with a psycopg pool of up
  to 32 connections; the task is an `async` function POSTing over keep-alive asyncio-stream
  connections (a pool per process) with `X-AT-Task-Id` = the job id. Other worker settings are
  procrastinate's defaults (jobs kept, not deleted; heartbeat every 10 s).
- **Polling**: procrastinate's LISTEN/NOTIFY fires when a job is *inserted*, not when it falls due,
  so once a worker has caught up, a scheduled job waits for the worker's next poll:
  `fetch_job_polling_interval` sets its lateness floor. Its default is 5 s; here it is
  {POLLING_INTERVAL_PER_PROCESS_S * 1000:g} ms x worker processes (one poll per
  {POLLING_INTERVAL_PER_PROCESS_S * 1000:g} ms across the fleet), its best for lateness in short trial runs
  (5,000-10,000 jobs over 30-60 s, this machine): with 1 process 10 ms gave p50 11 ms against 33 ms at
  50 ms, 150 ms at 200 ms and 560 ms at 1 s; with 4 processes 10 ms gave p50 10 ms but p95 99 ms and
  p99 270 ms, against 14 / 40 / 48 ms at 50 ms. Shorter is not free: every empty poll scans the
  waiting jobs in id order (measured: 4 ms with 10,000 waiting, 30 ms with 100,000). AT's dispatcher
  instead sleeps until the next task is due (LISTEN wakes it for tasks created due sooner).

{table(headers, rows)}
"""


def run(quick: bool = False) -> str:
    """For `python -m devtools.bench`: quick = 2,000 tasks, 1 process; else 10k and 100k, 1 and 4."""
    began = time.monotonic()
    results, version, where, facts = measure(QUICK if quick else FULL, WINDOW_S)
    return markdown(results, version, where, WINDOW_S, facts, load_average(),
                    time.monotonic() - began)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2_000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--window", type=float, default=WINDOW_S)
    parser.add_argument(
        "--polling-interval",
        type=float,
        help="procrastinate's fetch_job_polling_interval, s (default: 12.5 ms x processes)",
    )
    parser.add_argument("--skip-at", action="store_true", help="run procrastinate only")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help=argparse.SUPPRESS)
    parser.add_argument("--name", default="peer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # This file runs as __main__; procrastinate warns about tasks defined there, so use the module.
    from devtools.bench import peer

    if args.worker:
        asyncio.run(peer._work(os.environ[CONNINFO_ENV], args.concurrency, args.polling_interval, args.name))
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results, *_ = peer.measure(((args.tasks, args.processes),), args.window, args.polling_interval,
                                        skip_at=args.skip_at)  # fmt: skip
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
