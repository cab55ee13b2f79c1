"""HTTP from tests and benchmarks to a server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(
    method: str, url: str, body: bytes | str | None = None, headers: dict | None = None
) -> tuple[int, Any, str | None]:
    """One HTTP request; returns (status, parsed JSON body or text, Content-Type)."""
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            raw, status, content_type = response.read(), response.status, response.headers.get("Content-Type")
    except urllib.error.HTTPError as error:
        raw, status, content_type = error.read(), error.code, error.headers.get("Content-Type")
    try:
        return status, json.loads(raw), content_type
    except ValueError:
        return status, raw.decode(), content_type
