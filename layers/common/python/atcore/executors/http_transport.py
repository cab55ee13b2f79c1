"""Persistent HTTP(S) connections for callbacks: one idle connection per destination per thread.

http.client rather than urllib (a new connection per request) or requests (not in the layer):
keep-alive reuse is what lets a few worker threads push thousands of callbacks a second.

Each connection is pinned to addresses that safety.vetted_addresses approved: it speaks HTTP (Host
header, TLS SNI and certificate check) to the URL's host name, but its socket goes to a vetted IP,
never to whatever a second DNS lookup would answer.
"""

from __future__ import annotations

import functools
import http.client
import select
import socket
import ssl
import threading
from collections import OrderedDict
from dataclasses import dataclass

MAX_IDLE_CONNECTIONS_PER_THREAD = 32
# A response body is drained (so the connection can be reused) up to this size; beyond it the
# connection is dropped instead of reading megabytes nobody looks at.
MAX_DRAINED_BODY_BYTES = 64 * 1024

# What a kept-alive connection that the server already closed looks like when we use it anyway.
_STALE_CONNECTION_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, ssl.SSLEOFError,
                            ssl.SSLZeroReturnError)  # http.client.RemoteDisconnected is a ConnectionResetError


@dataclass(frozen=True)
class Destination:
    scheme: str  # "http" | "https"
    host: str  # as in the URL (Host header, SNI, certificate check)
    port: int
    addresses: tuple[str, ...]  # vetted IPs, tried in order

    @property
    def pool_key(self) -> tuple[str, str, int, str]:
        return (self.scheme, self.addresses[0], self.port, self.host)


@dataclass(frozen=True)
class Reply:
    status: int
    body_head: bytes  # at most MAX_DRAINED_BODY_BYTES


@functools.cache
def tls_context() -> ssl.SSLContext:
    """System CA bundle, hostname verification on; created once per process."""
    return ssl.create_default_context()


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, destination: Destination, timeout: float) -> None:
        super().__init__(destination.host, destination.port, timeout=timeout)
        self._create_connection = functools.partial(_connect_vetted, destination.addresses)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, destination: Destination, timeout: float) -> None:
        super().__init__(destination.host, destination.port, timeout=timeout, context=tls_context())
        self._create_connection = functools.partial(_connect_vetted, destination.addresses)


def _connect_vetted(addresses: tuple[str, ...], address: tuple[str, int], timeout: float,
                    source_address: tuple[str, int] | None = None) -> socket.socket:
    """http.client's socket factory, given (host, port): we ignore the host and dial the vetted IPs."""
    last_error: OSError | None = None
    for ip in addresses:
        try:
            return socket.create_connection((ip, address[1]), timeout, source_address)
        except OSError as exc:
            last_error = exc
    assert last_error is not None
    raise last_error


class _IdleConnections(threading.local):
    def __init__(self) -> None:
        self.by_key: OrderedDict[tuple[str, str, int, str], http.client.HTTPConnection] = OrderedDict()


_idle = _IdleConnections()


def send(destination: Destination, method: str, target: str, headers: dict[str, str], body: bytes | None,
         timeout: float) -> Reply:
    """One request/response; reconnects once, transparently, if a kept-alive connection turns out stale.

    Replaying after a reset on a reused connection can deliver twice if the server had processed the
    request before dropping the connection; every callback carries an Idempotency-Key for exactly that
    (Go's net/http makes the same call for requests with that header).
    """
    connection = _take_idle(destination.pool_key)
    if connection is not None:
        try:
            return _round_trip(destination, connection, method, target, headers, body, timeout)
        except _STALE_CONNECTION_ERRORS:
            pass  # the server closed it between our liveness check and the request: reconnect once
    connection = _new_connection(destination, timeout)
    return _round_trip(destination, connection, method, target, headers, body, timeout)


def close_idle_connections() -> None:
    """Closes this thread's idle connections (tests, and threads about to end)."""
    while _idle.by_key:
        _, connection = _idle.by_key.popitem()
        connection.close()


def _round_trip(destination: Destination, connection: http.client.HTTPConnection, method: str, target: str,
                headers: dict[str, str], body: bytes | None, timeout: float) -> Reply:
    try:
        _set_timeout(connection, timeout)
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        body_head = response.read(MAX_DRAINED_BODY_BYTES + 1)
    except BaseException:
        connection.close()
        raise
    if response.isclosed() and len(body_head) <= MAX_DRAINED_BODY_BYTES and connection.sock is not None:
        _keep_idle(destination.pool_key, connection)
    else:
        connection.close()  # body not drained or server said "Connection: close"
    return Reply(status=response.status, body_head=body_head[:MAX_DRAINED_BODY_BYTES])


def _new_connection(destination: Destination, timeout: float) -> http.client.HTTPConnection:
    if destination.scheme == "https":
        return _PinnedHTTPSConnection(destination, timeout)
    return _PinnedHTTPConnection(destination, timeout)


def _set_timeout(connection: http.client.HTTPConnection, timeout: float) -> None:
    connection.timeout = timeout
    if connection.sock is not None:
        connection.sock.settimeout(timeout)


def _take_idle(key: tuple[str, str, int, str]) -> http.client.HTTPConnection | None:
    connection = _idle.by_key.pop(key, None)
    if connection is not None and not _is_still_open(connection):
        connection.close()  # the server closed it while idle (its keep-alive timeout)
        return None
    return connection


def _keep_idle(key: tuple[str, str, int, str], connection: http.client.HTTPConnection) -> None:
    _idle.by_key[key] = connection
    _idle.by_key.move_to_end(key)
    while len(_idle.by_key) > MAX_IDLE_CONNECTIONS_PER_THREAD:
        _, oldest = _idle.by_key.popitem(last=False)
        oldest.close()


def _is_still_open(connection: http.client.HTTPConnection) -> bool:
    """An idle connection must have nothing to read: readable means EOF (closed by the server) or junk."""
    sock = connection.sock
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)
