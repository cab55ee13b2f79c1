"""Idempotency-Key on creates: what the key means (its settings, the request's fingerprint).

The rules are the IETF httpapi draft's and Stripe's: the first request with a key is processed and
its answer kept, with the tasks, in one transaction (atcore.service); the same key with the same
request within the TTL gets that answer again (`Idempotent-Replayed: true`); with another request, 422.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field

from atcore.env import settings_reader


class IdempotencySettings(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    # How long a key is remembered; the dispatcher deletes older ones (a small batch a second).
    ttl_hours: int = Field(default=24, ge=1, le=24 * 365, alias="AT_IDEMPOTENCY_TTL_HOURS")


idempotency_settings = settings_reader(IdempotencySettings)


def fingerprint(body: object) -> str:
    """The request as parsed JSON, canonical (sorted keys, no spaces): the same request however it
    was written. sha256 hex, so the stored fingerprint holds nothing of the payload."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
