"""`make run`: the whole of AT on one machine, without Docker.

1. PostgreSQL: DB_HOST if set, else an embedded server in .local/pgdata (kept between runs).
2. Migrations, applied like the deploy-time custom resource does.
3. AT_DISPATCHERS engine processes (default 1): dispatcher + in-process workers.
4. The API on http://127.0.0.1:${API_PORT:-8080}, routed by template.yaml, handlers in-process;
   its OpenAPI document at /openapi.json and a Swagger UI at /docs.

The local run delivers e-mail, SMS and SQS messages to .local/outbox unless AWS is configured
explicitly (see README), and allows callbacks to local addresses.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from devtools.lifetime import die_with_parent

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / ".local"
LOG = logging.getLogger("devtools.run")
EMBEDDED_PORT = int(os.environ.get("AT_EMBEDDED_PG_PORT", "54329"))

# Local defaults; anything already in the environment wins.
LOCAL_DEFAULTS = {
    "AT_HTTP_ALLOW_PRIVATE": "1",
    "AT_EMAIL_FROM": "at@localhost",  # e-mail tasks without "from" (the README's first example) go to the outbox
    "AT_OUTBOX_DIR": str(LOCAL / "outbox"),
    "POWERTOOLS_METRICS_DISABLED": "true",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_LOG_LEVEL": "INFO",
}


def _start_database() -> object | None:
    """Point DB_* at a database that exists; returns the embedded server we started, if any."""
    if os.environ.get("DB_HOST"):
        return None
    from devtools.pgserver import DEFAULT_DATABASE, EmbeddedPostgres

    server = EmbeddedPostgres(LOCAL / "pgdata", port=EMBEDDED_PORT).start()
    server.create_database(DEFAULT_DATABASE)
    os.environ.update(server.env(DEFAULT_DATABASE))
    return server


def _start_engines(count: int) -> list[subprocess.Popen]:
    parent = os.getpid()
    return [
        subprocess.Popen(
            [sys.executable, "-m", "devtools.engine"], cwd=ROOT, preexec_fn=lambda: die_with_parent(parent)
        )
        for _ in range(count)
    ]


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the run as cleanly as Ctrl+C


def main() -> None:
    for name, value in LOCAL_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from devtools.local_api import configure_logging, create_local_api, default_processes

    configure_logging(os.environ["POWERTOOLS_LOG_LEVEL"].upper(), service="local-run")
    server = _start_database()
    from devtools.openapi import docs_routes
    from migrate import migrate_configured_database

    migrate_configured_database()
    engines = _start_engines(int(os.environ.get("AT_DISPATCHERS", "1")))
    api = create_local_api(
        ROOT / "template.yaml", port=int(os.environ.get("API_PORT", "8080")), extra_routes=docs_routes()
    )
    signal.signal(signal.SIGTERM, _interrupt)
    LOG.info("AT is running: API on %s, docs on %s/docs (Ctrl+C stops it)", api.url, api.url)
    try:
        api.serve_forever(processes=int(os.environ.get("AT_API_PROCESSES") or default_processes()))
    except KeyboardInterrupt:
        pass
    finally:
        api.shutdown()
        for engine in engines:
            engine.terminate()
        for engine in engines:
            engine.wait(20)
        if server is not None:
            server.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
