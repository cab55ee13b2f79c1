"""The AWS execution path, measured offline: dispatcher → SQS → worker, settings from template.yaml.

    python -m devtools.bench aws_path            # writes its section of docs/BENCHMARKS.md
    python -m devtools.bench --quick aws_path    # smaller numbers, printed only

Runs devtools.aws_topology: the real dispatcher and worker functions in execution environments of
their own (one process each, one invocation at a time), Lambda's SQS poller emulated with the
template's BatchSize, batching window and MaximumConcurrency, SQS answered by moto in its own
process, a real PostgreSQL (durable), and a callback sink in its own process that answers after
--delay (100 ms: a receiver doing real work). Tasks are inserted with SQL, due as each scenario
says; lateness is the sink's arrival time minus execute_at.

Everything shares this machine's cores, unlike on AWS where each execution environment has its
own: the figures are a floor for throughput, and per-task costs (invocations, billed duration,
SQS requests, database statements) are what they would be on AWS.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.bench import common

CALLBACK_DELAY_MS = 100
# Lambda's list prices, us-east-1, x86_64 (aws.amazon.com/lambda/pricing, read 2026-12-02).
LAMBDA_GB_SECOND_USD = 0.0000166667
LAMBDA_REQUEST_USD = 0.20 / 1e6
SQS_REQUEST_USD = 0.40 / 1e6  # standard queue, beyond the first million a month


@dataclass(frozen=True)
class Config:
    name: str
    batch_size: int | None = None  # None: the template's
    max_concurrency: int | None = None


TEMPLATE = Config("template (recommended)")  # BatchSize 10, MaximumConcurrency 20 since 2026-12-02
EARLIER = Config("earlier template", batch_size=5, max_concurrency=10)  # the defaults until 2026-12-02


@dataclass(frozen=True)
class Scenario:
    name: str
    tasks: int
    window: float  # due evenly within this many seconds (0: all at once)
    lead: float = 5.0  # the first is due this many seconds after they are inserted
    warm: bool = False  # every worker environment started before the tasks are inserted


@dataclass
class Result:
    config: Config
    scenario: Scenario
    lateness: list[float]
    lost: int
    duplicated: int
    failed: int
    drain_seconds: float
    invocations: int
    cold_starts: int
    billed_gb_seconds: float
    worker_cpu_seconds: float
    dispatcher_cpu_seconds: float
    sqs_requests: dict[str, int]
    db_transactions: int
    batch_size: int
    max_concurrency: int


class Sink:
    def __init__(self, scratch: Path, delay_ms: float) -> None:
        self.out = scratch / "arrivals.jsonl"
        ready = scratch / "sink.port"
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devtools.bench.sink",
                "--out",
                str(self.out),
                "--ready-file",
                str(ready),
                "--delay-ms",
                str(delay_ms),
            ],
            cwd=common.ROOT,
        )
        while not ready.exists() or not ready.read_text():
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{ready.read_text()}/callback"

    def arrivals(self) -> list[tuple[int, int, float]]:
        self._process.terminate()
        self._process.wait(30)
        return [tuple(json.loads(line)) for line in self.out.read_text().splitlines()]


def _transactions(conn) -> int:
    return int(
        conn.run("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")[0][0]
    )


def run_one(config: Config, scenario: Scenario, timeout: float) -> Result:
    from devtools.aws_topology import AwsTopology

    with common.bench_database() as database, tempfile.TemporaryDirectory(prefix="at-bench-aws-") as scratch:
        sink = Sink(Path(scratch), CALLBACK_DELAY_MS)
        overrides = {"POWERTOOLS_LOG_LEVEL": "WARNING"}
        with AwsTopology(
            database.env(),
            overrides=overrides,
            batch_size=config.batch_size,
            max_concurrency=config.max_concurrency,
            log_dir=Path(scratch),
        ) as aws:
            mapping = aws.mapping_settings
            if scenario.warm:
                aws.mapping.prewarm()
            conn = database.connect()
            payload = json.dumps({"url": sink.url, "method": "POST", "data": {"bench": True}})
            conn.run(
                "INSERT INTO scheduled_tasks (execute_at, task_type, payload, max_attempts) "
                "SELECT now() + make_interval(secs => CAST(:lead AS float8) + CAST(:window AS float8) * i / :n), "
                "'http_callback', CAST(:payload AS jsonb), 3 FROM generate_series(0, :n - 1) AS i",
                lead=scenario.lead,
                window=scenario.window,
                n=scenario.tasks,
                payload=payload,
            )
            conn.run("ANALYZE scheduled_tasks")
            transactions_before = _transactions(conn)
            began = time.monotonic()
            aws.start_schedule()
            deadline = began + timeout
            while time.monotonic() < deadline:
                done = conn.run("SELECT count(*) FROM scheduled_tasks WHERE status IN ('completed', 'failed')")[0][0]
                if done >= scenario.tasks:
                    break
                time.sleep(0.5)
            drain = time.monotonic() - began - scenario.lead
            time.sleep(1.0)  # statistics of the last transactions reach pg_stat_database
            transactions = _transactions(conn) - transactions_before
            rows = conn.run("SELECT id, extract(epoch FROM execute_at)::float8, status FROM scheduled_tasks")
            conn.close()
            stats = aws.mapping.stats
            memory_gb = aws.settings.worker.memory_mb / 1024
            result_parts: dict[str, Any] = {
                "invocations": stats.invocations,
                "cold_starts": stats.cold_starts,
                "billed_gb_seconds": stats.billed_ms / 1000 * memory_gb,
                "worker_cpu_seconds": sum(env.cpu_seconds() for env in aws.mapping.environments),
                "dispatcher_cpu_seconds": sum(env.cpu_seconds() for env in aws.dispatchers),
                "sqs_requests": aws.sqs_requests(),
            }
        arrivals = sink.arrivals()
    due = {row[0]: row[1] for row in rows}
    first: dict[int, float] = {}
    duplicated = 0
    for task_id, attempt, at in arrivals:
        if task_id in first and attempt == 1:
            duplicated += 1
        first.setdefault(task_id, at)
    lateness = [first[task_id] - due[task_id] for task_id in first if task_id in due]
    return Result(
        config=config,
        scenario=scenario,
        lateness=lateness,
        lost=len(set(due) - set(first)),
        duplicated=duplicated,
        failed=sum(1 for row in rows if row[2] == "failed"),
        drain_seconds=drain,
        db_transactions=transactions,
        batch_size=mapping.batch_size,
        max_concurrency=mapping.max_concurrency,
        **result_parts,
    )


def _row(result: Result) -> list[object]:
    late = result.lateness
    pct = (lambda p: f"{common.percentile(late, p):.2f}") if late else (lambda _p: "-")
    return [
        result.config.name,
        f"{result.batch_size} x {result.max_concurrency}",
        result.scenario.name,
        pct(50),
        pct(99),
        f"{max(late):.2f}" if late else "-",
        result.lost,
        result.duplicated,
        result.failed,
        f"{result.drain_seconds:.1f}",
    ]


def usd_per_million(result: Result) -> tuple[float, float]:
    """(the worker's Lambda bill, SQS's) per million tasks, from the measured counts and list prices."""
    per_task = 1 / result.scenario.tasks
    worker = (result.billed_gb_seconds * LAMBDA_GB_SECOND_USD + result.invocations * LAMBDA_REQUEST_USD) * per_task
    sqs = sum(result.sqs_requests.values()) * SQS_REQUEST_USD * per_task
    return worker * 1e6, sqs * 1e6


def _cost_row(result: Result) -> list[object]:
    per = 1000 / result.scenario.tasks
    sqs = sum(result.sqs_requests.values())
    worker_usd, sqs_usd = usd_per_million(result)
    return [
        result.config.name,
        result.scenario.name,
        f"{result.invocations * per:.0f}",
        f"{result.billed_gb_seconds * per:.2f}",
        f"{worker_usd:.2f}",
        f"{sqs * per:.0f}",
        f"{sqs_usd:.2f}",
        f"{result.db_transactions * per:.0f}",
        f"{result.worker_cpu_seconds * per:.2f}",
        f"{result.dispatcher_cpu_seconds * per:.2f}",
    ]


def run(quick: bool = False) -> str:
    configs = [EARLIER, TEMPLATE]
    scenarios = [
        Scenario("stress test: 4,000 due within a minute", 4000, 60.0),
        Scenario("stress test, warm workers", 4000, 60.0, warm=True),
        Scenario("burst: 20,000 due at once", 20000, 0.0),
    ]
    # The sustained rate where lateness starts to grow: 30 s of tasks due at each rate (from cold).
    rates = [Scenario(f"sustained: {rate}/s for 30 s", rate * 30, 30.0) for rate in (50, 100, 200, 400)]
    if quick:
        configs = configs[1:]
        scenarios = [
            Scenario("quick: 400 due within 10 s", 400, 10.0),
            Scenario("quick: 400 within 10 s, warm", 400, 10.0, warm=True),
            Scenario("quick: 1,000 at once", 1000, 0.0),
        ]
        rates = []
    plan = [(config, scenario) for config in configs for scenario in scenarios] + [(TEMPLATE, s) for s in rates]
    results = []
    for config, scenario in plan:
        print(f"-- {config.name}: {scenario.name}", flush=True)
        result = run_one(config, scenario, timeout=max(120.0, scenario.window + scenario.tasks / 20))
        results.append(result)
        print("   " + " | ".join(str(cell) for cell in _row(result)), flush=True)
    facts = common.machine_facts(None)
    lateness = common.table(
        [
            "settings",
            "batch x concurrency",
            "scenario",
            "lateness p50 s",
            "p99 s",
            "max s",
            "lost",
            "run twice",
            "failed",
            "drain s",
        ],
        [_row(r) for r in results],
    )
    costs = common.table(
        [
            "settings",
            "scenario",
            "worker invocations",
            "billed GB-s",
            "worker USD per million tasks",
            "SQS requests",
            "SQS USD per million tasks",
            "DB transactions",
            "worker CPU s",
            "dispatcher CPU s",
        ],
        [_cost_row(r) for r in results],
    )
    return f"""## The AWS execution path, offline (`aws_path`)

{facts}

The real dispatcher and worker functions, each in execution environments of its own, Lambda's SQS
poller emulated from template.yaml, SQS answered by moto in its own process, callbacks answered
after {CALLBACK_DELAY_MS} ms by a sink in its own process; tasks inserted with SQL (creation through
API Gateway is not part of this path). All of it shares this machine's 2 cores.

{lateness}

Per 1,000 tasks (billed GB-s: worker duration rounded up to the millisecond, cold starts included,
times its memory; DB transactions include the dispatcher's idle polling during the run):

{costs}
"""
