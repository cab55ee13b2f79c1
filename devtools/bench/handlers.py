"""Handler overhead: warm API handlers against raw pg8000 running the same SQL.

For each operation (create, get, cancel, list) one round times the function's `lambda_handler`
on its events/*.json event and `pg8000.native.Connection.run` of the same named query with the
same parameters, on a second connection to the same database; the order within a round
alternates, so drift and caches affect both alike. Goal: handler p50 <= 1.5 x raw p50.
When an operation misses it, cProfile says where the handler's time goes.
"""

from __future__ import annotations

import cProfile
import functools
import json
import pstats
import time
from collections import defaultdict
from datetime import datetime

import pg8000.native

from devtools.bench import common
from devtools.bench.listing import load_tasks

ROUNDS = 1000
WARMUP_ROUNDS = 50
PROFILE_CALLS = 300
SEED_TASKS = 10_000  # so the list query has a realistic table to work on
GOAL_RATIO = 1.5
OPS = ("create", "get", "cancel", "list")
FUNCTIONS = {"create": "create_task", "get": "get_task", "cancel": "cancel_task", "list": "list_tasks"}


class Operation:
    """One API operation: its handler call and the raw SQL call it boils down to."""

    def __init__(self, op: str, raw: pg8000.native.Connection, fresh_ids: list[int]) -> None:
        from atcore.api import PAGE_BUDGET
        from atcore.models import CANCELLABLE_STATUSES
        from atcore.sql import query

        self.name = op
        self.handler = common.load_function(FUNCTIONS[op]).lambda_handler
        self.event = common.load_event(FUNCTIONS[op])
        self.raw = raw
        self.fresh_ids = fresh_ids  # pending tasks, one per cancel call
        self.sql = query(FUNCTIONS[op])  # each function's query has the function's name
        if op == "create":
            body = json.loads(self.event["body"])
            self.params = {
                "execute_at": datetime.fromisoformat(body["execute_at"]),
                "task_type": body["task_type"],
                "payload": json.dumps(body["payload"], ensure_ascii=False, allow_nan=False),
                "max_attempts": body["max_attempts"],
            }
        elif op == "list":
            q = self.event["queryStringParameters"]
            self.params = {"status": q["status"], "task_type": q["task_type"], "limit": int(q["limit"]) + 1,
                           "offset": int(q["offset"]), "before_id": None, "max_bytes": PAGE_BUDGET}  # fmt: skip
        elif op == "cancel":
            self.params = {"id": int(self.event["pathParameters"]["id"]), "cancellable": sorted(CANCELLABLE_STATUSES)}
        else:
            self.params = {"id": int(self.event["pathParameters"]["id"])}

    def _event(self) -> dict:
        if self.name != "cancel":
            return self.event
        task_id = str(self.fresh_ids.pop())
        return {**self.event, "pathParameters": {"id": task_id}, "path": f"/api/v1/tasks/{task_id}"}

    def call_handler(self) -> float:
        event = self._event()  # outside the timed part
        began = time.perf_counter()
        response = self.handler(event, common.lambda_context())
        elapsed = time.perf_counter() - began
        assert response["statusCode"] in (200, 201), response
        return elapsed

    def call_raw(self) -> float:
        params = self.params | {"id": self.fresh_ids.pop()} if self.name == "cancel" else self.params
        began = time.perf_counter()
        rows = self.raw.run(self.sql, **params)
        elapsed = time.perf_counter() - began
        assert rows, f"{self.name}: no row"
        return elapsed

    def call_raw_preparsed(self) -> float:
        """run() minus its Python pass that turns :name into $n (done once, outside the timing):
        the least any pg8000 caller can spend on this statement."""
        params = self.params | {"id": self.fresh_ids.pop()} if self.name == "cancel" else self.params
        statement, make_values = _parsed(self.sql)
        began = time.perf_counter()
        rows = self.raw.execute_unnamed(statement, make_values(params), oids=()).rows
        elapsed = time.perf_counter() - began
        assert rows, f"{self.name}: no row"
        return elapsed


@functools.cache
def _parsed(sql: str) -> tuple:
    return pg8000.native.to_statement(sql)


def pending_task_ids(conn: pg8000.native.Connection, count: int) -> list[int]:
    rows = conn.run(
        "INSERT INTO scheduled_tasks (execute_at, task_type, payload) "
        "SELECT now() + interval '1 day', 'send_email', '{\"to\": \"user@example.com\"}' "
        "FROM generate_series(1, :count) RETURNING id",
        count=count,
    )
    return [row[0] for row in rows]


def measure(operations: dict[str, Operation], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Rounds of every operation, each way once; the order of the ways rotates from round to round."""
    samples: dict[str, dict[str, list[float]]] = {op: {"handler": [], "raw": [], "preparsed": []} for op in operations}
    for i in range(rounds):
        for op, operation in operations.items():
            ways = [("handler", operation.call_handler), ("raw", operation.call_raw),
                    ("preparsed", operation.call_raw_preparsed)]  # fmt: skip
            for way, call in ways[i % 3 :] + ways[: i % 3]:
                samples[op][way].append(call())
    return samples


_AREAS = (  # where a function's file lives -> the part of the stack it belongs to
    ("/pg8000/", "pg8000: protocol, query text, type conversion"),
    ("/pydantic", "pydantic: validation, serialization"),
    ("/aws_lambda_powertools/", "Powertools: resolver, logger, metrics"),
    ("/atcore/", "atcore and the function"),
    ("/functions/", "atcore and the function"),
    ("/devtools/bench/", "the benchmark's call"),
)
_SOCKET = "waiting for PostgreSQL (socket send/recv)"


def _own_area(func: tuple[str, int, str]) -> str | None:
    filename, _line, name = func
    if "_socket.socket" in name:
        return _SOCKET
    if "pydantic_core" in name:
        return "pydantic: validation, serialization"
    return next((area for marker, area in _AREAS if marker in filename), None)


def areas(stats: pstats.Stats) -> dict[str, float]:
    """Self time by area; stdlib and builtins count for the area of whoever called them
    (split by caller, as cProfile records it), so `len` called by pg8000 is pg8000's."""
    table = stats.stats  # type: ignore[attr-defined]  # {func: (cc, nc, tottime, cumtime, callers)}
    memo: dict[tuple, dict[str, float]] = {}

    def shares(func: tuple, seen: frozenset) -> dict[str, float]:
        if func in memo:
            return memo[func]
        own = _own_area(func)
        callers = table.get(func, (0, 0, 0, 0, {}))[4]
        spent = {caller: value[2] for caller, value in callers.items() if caller not in seen}
        if own or not spent or not sum(spent.values()):
            result = {own or "stdlib and builtins": 1.0}
        else:
            result = defaultdict(float)
            for caller, tottime in spent.items():
                for area, share in shares(caller, seen | {func}).items():
                    result[area] += share * tottime / sum(spent.values())
        memo[func] = result
        return result

    by_area: dict[str, float] = defaultdict(float)
    for func, (_cc, _nc, tottime, _ct, _callers) in table.items():
        for area, share in shares(func, frozenset({func})).items():
            by_area[area] += tottime * share
    return by_area


# Checkpoints down the call stack of a request: (what runs from here to the next one, file, function).
# The time of a layer is its function's cumulative time minus the next checkpoint's.
WATERFALL = [
    ("Logger.inject_lambda_context", "aws_lambda_powertools/logging/logger.py", "decorate"),
    ("Tracer.capture_lambda_handler (tracing off outside Lambda)", "aws_lambda_powertools/tracing/tracer.py",
     "decorate"),
    ("Metrics.log_metrics (metrics disabled)", "aws_lambda_powertools/metrics/provider/base.py", "decorate"),
    ("resolver: body check, event, routing, response", "atcore/api.py", "lambda_handler"),
    ("OpenAPI validation: parameters/body in, response model out", "middlewares/openapi_validation.py", "handler"),
    ("route, service, repository: parameters, Task models", "functions/", ""),
    ("pg8000: statement and round trip (what `pre-parsed` times)", "atcore/db.py", "run"),
]  # fmt: skip


def waterfall(stats: pstats.Stats, calls: int) -> list[list[str]]:
    """Per-layer time per request along WATERFALL (cumulative minus the next checkpoint's)."""
    cumulative = []
    for _label, path, name in WATERFALL:
        matches = [value[3] for (filename, _line, func), value in stats.stats.items()  # type: ignore[attr-defined]
                   if path in filename and (func == name or (not name and func != "lambda_handler"))]  # fmt: skip
        if not matches:
            return []
        cumulative.append(max(matches))
    rows = []
    for i, (label, _path, _name) in enumerate(WATERFALL):
        own = cumulative[i] - (cumulative[i + 1] if i + 1 < len(cumulative) else 0)
        rows.append([label, f"{own / calls * 1000:.3f}"])
    rows.append(["**whole handler**", f"**{cumulative[0] / calls * 1000:.3f}**"])
    return rows


def profile(operation: Operation, calls: int) -> str:
    """Where `calls` handler calls spend their time: by layer, by area, and the top functions."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        operation.call_handler()
    profiler.disable()
    stats = pstats.Stats(profiler)
    by_area = areas(stats)
    total = sum(by_area.values())
    area_rows = [[area, f"{t / calls * 1000:.3f}", f"{100 * t / total:.0f}%"]
                 for area, t in sorted(by_area.items(), key=lambda item: -item[1])]  # fmt: skip
    entries = []
    for func, (_cc, ncalls, tottime, _cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if _own_area(func) == _SOCKET:
            continue
        filename, line, name = func
        where = filename.split("site-packages/")[-1].split(str(common.ROOT) + "/")[-1]
        entries.append((tottime, ncalls, f"{where}:{line}({name})" if line else name))
    top = [[f"`{where}`", f"{n / calls:.1f}", f"{t / calls * 1000:.3f}"]
           for t, n, where in sorted(entries, reverse=True)[:12]]  # fmt: skip
    parts = []
    if layers := waterfall(stats, calls):
        parts += ["By layer, down the call stack (ms per request):", common.table(["layer", "ms"], layers)]
    parts += [
        "By area (self time; standard library and builtins counted for their caller):",
        common.table(["area", "ms per request", "share"], area_rows),
        "Top functions by self time (socket waits left out):",
        common.table(["function", "calls per request", "self ms per request"], top),
    ]
    return "\n\n".join(parts)


def run(quick: bool = False) -> str:
    rounds, warmup, profile_calls = (100, 10, 50) if quick else (ROUNDS, WARMUP_ROUNDS, PROFILE_CALLS)
    common.quiet_powertools()
    with common.bench_database() as database:
        setup = database.connect()
        load_tasks(setup, SEED_TASKS)
        setup.run("VACUUM ANALYZE scheduled_tasks")
        fresh = pending_task_ids(setup, 3 * (rounds + warmup) + profile_calls)
        raw_conn = database.connect()
        operations = {op: Operation(op, raw_conn, fresh) for op in OPS}
        facts = common.machine_facts(database.server_version())
        measure(operations, warmup)
        began = time.perf_counter()
        samples = measure(operations, rounds)
        elapsed = time.perf_counter() - began
        load_during = common.load_average()
        rows, profiles = [], {}
        for op, ways in samples.items():
            handler, raw, preparsed = (common.p50(ways[w]) for w in ("handler", "raw", "preparsed"))
            rows.append([
                op, *(f"{common.ms(common.p50(ways[w]))} / {common.ms(common.p95(ways[w]))}"
                      for w in ("handler", "raw", "preparsed")),
                f"{(handler - raw) * 1000:.2f}",
                f"**{handler / raw:.2f}x**" + (" ✗" if handler / raw > GOAL_RATIO else ""),
                f"{common.p95(ways['handler']) / common.p95(ways['raw']):.2f}x",
                f"{handler / preparsed:.2f}x" + (" ✗" if handler / preparsed > GOAL_RATIO else ""),
            ])  # fmt: skip
            if handler / raw > GOAL_RATIO or handler / preparsed > GOAL_RATIO:
                profiles[op] = profile(operations[op], profile_calls)
        raw_conn.close()
        setup.close()
    headers = ["operation", "handler", "raw", "pre-parsed", "overhead p50 (handler - raw)", "ratio p50 (vs raw)",
               "ratio p95", "ratio p50 vs pre-parsed"]  # fmt: skip
    lines = [
        "## Handler overhead",
        "",
        facts,
        "",
        f"Warm invocations of each API function's `lambda_handler` on its events/*.json event, against the "
        f"same named SQL with the same parameters run by raw pg8000 on a second connection to the same "
        f"database ({database.where}, {SEED_TASKS:,} tasks in it). Two raw baselines: `raw` is "
        "`pg8000.native.Connection.run`, which re-parses the SQL text for `:name` parameters in Python on "
        "every call; `pre-parsed` sends the same unnamed statement with that parsing done once beforehand "
        f"(the least any pg8000 caller can spend). {rounds} rounds after {warmup} warm-up rounds; a round "
        "runs every operation once each way, rotating which way goes first. Cancel gets a fresh pending task "
        "per call (inserted beforehand by SQL). The list event is `status=pending&task_type=send_email&limit=20`. "
        "The benchmark sets POWERTOOLS_LOG_LEVEL=WARNING and POWERTOOLS_METRICS_DISABLED=true; tracing is off "
        f"outside Lambda. The measured part took {elapsed:.0f} s; load average at its end: {load_during}.",
        "",
        f"**Goal: handler p50 ≤ {GOAL_RATIO}x raw p50.** Times in ms, p50 / p95; ✗ misses the goal.",
        "",
        common.table(headers, rows),
    ]
    for op, text in profiles.items():
        lines += [
            "",
            f"### Where the {op} handler's time goes (cProfile, {profile_calls} calls)",
            "",
            "cProfile slows Python code more than waiting, so the Python layers look bigger here "
            "than in the table above; compare them with each other.",
            "",
            text,
        ]
    return "\n".join(lines)
