"""Unit tests open no sockets (pytest-socket): what needs a network peer is an integration test."""

from __future__ import annotations

import pytest
from pytest_socket import disable_socket, enable_socket


@pytest.fixture(autouse=True)
def no_sockets() -> object:
    disable_socket(allow_unix_socket=False)
    yield
    enable_socket()
