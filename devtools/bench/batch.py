"""POST /api/v1/tasks/batch with 1,000 tasks: server time, through the function's handler.

    python -m devtools.bench batch

The handler in-process (validation, one INSERT of the 1,000 rows, the answer), against a durable
PostgreSQL, as on Lambda minus API Gateway. Goal: 100 ms for 1,000 tasks.
"""

from __future__ import annotations

import json
import time

from devtools.bench import common

GOAL_S = 0.100
SIZES = (1, 100, 1000)


def run(quick: bool = False) -> str:
    common.quiet_powertools()
    runs = 5 if quick else 25
    rows = []
    with common.bench_database() as database:
        handler = common.load_function("create_tasks_batch").lambda_handler
        facts = common.machine_facts(database.server_version())
        for size in SIZES:
            items = [
                {
                    "execute_at": "2099-01-01T12:00:00Z",
                    "task_type": "http_callback",
                    "payload": {"url": f"https://example.com/hooks/{i}", "data": {"order": i}},
                }
                for i in range(size)
            ]
            event = common.load_event("create_tasks_batch") | {"body": json.dumps({"tasks": items})}
            samples = []
            for n in range(runs + 2):  # the first two warm the function and the connection
                began = time.perf_counter()
                response = handler(event, common.lambda_context())
                elapsed = time.perf_counter() - began
                assert response["statusCode"] == 201, response["body"][:300]
                if n >= 2:
                    samples.append(elapsed)
            per_task = common.median(samples) / size
            rows.append([size, common.ms(common.p50(samples)), common.ms(common.p95(samples)), f"{per_task * 1e6:.0f}"])
        verdict = "met" if common.p50(samples) <= GOAL_S else "missed"
    table = common.table(["tasks", "p50 ms", "p95 ms", "µs per task"], rows)
    return f"""## Batch creates (`batch`)

{facts}

`POST /api/v1/tasks/batch` through its handler in-process ({runs} runs each, after two warm-up
calls): validation of every item, one INSERT of all the rows, the answer. API Gateway's own time is
not in it. Goal for 1,000 tasks: {GOAL_S * 1000:.0f} ms ({verdict}).

{table}
"""
