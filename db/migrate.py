"""Apply the ordered SQL migrations in db/migrations/ to the configured database.

- Locally: `python db/migrate.py` (make run and the tests call apply_migrations()).
- On deploy: the MigrateFunction (CodeUri db/) runs lambda_handler as a CloudFormation custom
  resource, so every `sam deploy` brings the schema up to date before the API is used.

Safe to run twice and from two processes at once: a session advisory lock serializes runners,
each file runs in its own transaction together with its row in schema_migrations, and files
already recorded are skipped (their checksum must not have changed).
"""

from __future__ import annotations

import hashlib
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_LOCK_KEY = 0x41545F4D4947  # "AT_MIG": one advisory lock id for every migration runner
# On deploy: how long to wait for the database to accept connections (MigrateFunction's timeout
# is 300 s), and how often to try.
_DEPLOY_CONNECT_SECONDS = 240.0
_CONNECT_RETRY_SECONDS = 10.0


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    return sorted(directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def apply_migrations(conn: Any, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations on a pg8000.native connection; returns the versions applied."""
    applied: list[str] = []
    conn.run("SELECT pg_advisory_lock(:key)", key=_LOCK_KEY)
    try:
        conn.run(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version TEXT PRIMARY KEY, checksum TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {version: checksum for version, checksum in conn.run("SELECT version, checksum FROM schema_migrations")}
        for path in migration_files(directory):
            version, text = path.stem, path.read_text(encoding="utf-8")
            if version in done:
                if done[version] != _checksum(text):
                    raise RuntimeError(f"migration {version} was changed after it was applied")
                continue
            conn.run("BEGIN")
            try:
                conn.run(text)  # no parameters: sent as a simple query, so a file may hold many statements
                conn.run(
                    "INSERT INTO schema_migrations (version, checksum) VALUES (:version, :checksum)",
                    version=version,
                    checksum=_checksum(text),
                )
                conn.run("COMMIT")
            except Exception:
                conn.run("ROLLBACK")
                raise
            applied.append(version)
    finally:
        conn.run("SELECT pg_advisory_unlock(:key)", key=_LOCK_KEY)
    return applied


def migrate_configured_database(connect_for_seconds: float = 0.0) -> list[str]:
    """connect_for_seconds: keep trying to connect that long while the database is unavailable.
    On a first deploy RDS Proxy may still be registering its new database when this runs."""
    import time

    from atcore.config import database_settings
    from atcore.db import open_connection
    from atcore.errors import DatabaseUnavailable

    give_up_at = time.monotonic() + connect_for_seconds
    while True:
        try:
            conn = open_connection(database_settings())
            break
        except DatabaseUnavailable:
            if time.monotonic() + _CONNECT_RETRY_SECONDS > give_up_at:
                raise
            time.sleep(_CONNECT_RETRY_SECONDS)
    try:
        return apply_migrations(conn)
    finally:
        conn.close()


def _send_cfn_response(event: dict[str, Any], context: Any, status: str, reason: str = "") -> None:
    body = json.dumps(
        {
            "Status": status,
            "Reason": reason or f"See CloudWatch log stream {getattr(context, 'log_stream_name', '')}",
            "PhysicalResourceId": event.get("PhysicalResourceId") or "at-database-migrations",
            "StackId": event["StackId"],
            "RequestId": event["RequestId"],
            "LogicalResourceId": event["LogicalResourceId"],
        }
    ).encode()
    url = event["ResponseURL"]
    if not url.startswith("https://"):
        raise ValueError("CloudFormation ResponseURL must be https")
    request = urllib.request.Request(url, data=body, method="PUT", headers={"Content-Type": ""})  # noqa: S310
    with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - checked above: CloudFormation's https URL
        pass


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """CloudFormation custom resource: migrate on Create/Update; Delete keeps the data."""
    from atcore.observability import logger

    try:
        if event.get("RequestType") in ("Create", "Update"):
            applied = migrate_configured_database(connect_for_seconds=_DEPLOY_CONNECT_SECONDS)
        else:
            applied = []
        logger.info("Migrations applied", extra={"versions": applied})
        if "ResponseURL" in event:
            _send_cfn_response(event, context, "SUCCESS")
        return {"applied": applied}
    except Exception as exc:
        logger.exception("Migration failed")
        if "ResponseURL" in event:
            _send_cfn_response(event, context, "FAILED", reason=f"migration failed: {type(exc).__name__}")
            return {"applied": []}
        raise


if __name__ == "__main__":
    print(json.dumps({"applied": migrate_configured_database()}))
    sys.exit(0)
