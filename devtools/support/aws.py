"""moto's side of AWS in tests: fake credentials and a region, never a real account."""

from __future__ import annotations

from typing import Any

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def use_fake_credentials(monkeypatch: Any, **more: str) -> None:
    """Set moto's fake credentials and region (and `more` variables), and forget cached settings and
    AWS clients made with others."""
    from atcore import env
    from atcore.executors import aws

    for name, value in (FAKE_CREDENTIALS | more).items():
        monkeypatch.setenv(name, value)
    env.reset()
    aws.reset_clients()
