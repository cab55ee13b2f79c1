"""Persistent HTTP(S) connections for callbacks: one idle connection per destination per thread.

http.client rather than urllib (a new connection per request) or requests (not in the layer):
keep-alive reuse is what lets a few worker threads push thousands of callbacks a second.

Each connection is pinned to addresses that safety.vetted_addresses approved: it speaks HTTP (Host
header, TLS SNI and certificate check) to the URL's host name, but its socket goes to a vetted IP,
never to whatever a second DNS lookup would answer.

Every request has one absolute deadline (time.monotonic()) for all of it: connect, TLS handshake,
sending, the status line and headers, the body. Before each socket operation the socket's timeout is
set to the time left (see _DeadlineSocket), so a peer that answers a byte at a time, or an address
that never answers, costs the attempt its deadline and no more. No thread per request, and nothing
more per call on a kept-alive connection than one timeout update per socket operation.
"""

from __future__ import annotations

import functools
import http.client
import select
import socket
import ssl
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .deadlines import remaining

MAX_IDLE_CONNECTIONS_PER_THREAD = 32
# A host name may resolve to many addresses (all are vetted); a connection tries the first few only.
MAX_ADDRESSES_TRIED = 3
# A response body is drained (so the connection can be reused) up to this size; beyond it the
# connection is dropped instead of reading megabytes nobody looks at.
MAX_DRAINED_BODY_BYTES = 64 * 1024

# What a kept-alive connection that the server already closed looks like when we use it anyway.
_STALE_CONNECTION_ERRORS = (
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)  # http.client.RemoteDisconnected is a ConnectionResetError


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
    context = ssl.create_default_context()
    context.sslsocket_class = _DeadlineSSLSocket
    return context


class _DeadlineSocket(socket.socket):
    """A TCP socket whose every blocking call waits at most until `deadline` (time.monotonic()).

    Each call first sets the socket timeout to the time left, so a peer dripping a byte a second
    cannot stretch an attempt: http.client's own timeout applies to each socket operation anew.
    sendall's timeout is for the whole call (CPython 3.5+), the rest wait once.
    """

    deadline: float | None = None

    def _arm(self) -> None:
        if self.deadline is not None:
            self.settimeout(remaining(self.deadline))

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        return super().recv_into(buffer, nbytes, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._arm()
        return super().recv(bufsize, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        self._arm()
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._arm()
        super().sendall(data, flags)


class _DeadlineSSLSocket(ssl.SSLSocket):
    """The same for TLS. The handshake (in wrap_socket) and each TLS read or write wait at most the
    socket's timeout in total, which is set to the time left before each of them."""

    deadline: float | None = None
    _arm = _DeadlineSocket._arm  # the same method, on the TLS socket class

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        self._arm()  # type: ignore[misc]
        return super().recv_into(buffer, nbytes or 0, flags)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        self._arm()  # type: ignore[misc]
        return super().recv(buflen, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        self._arm()  # type: ignore[misc]  # SSLSocket.sendall sends through send(), one armed write per chunk
        return super().send(data, flags)


class _Pinned:
    """What both connection classes add to http.client's: the vetted destination and the deadline."""

    destination: Destination
    deadline: float = 0.0
    sock: Any

    def set_deadline(self, deadline: float) -> None:
        self.deadline = deadline
        if self.sock is not None:
            self.sock.deadline = deadline

    def connect(self) -> None:
        """TCP to a vetted IP (never to what a second DNS lookup of the host would answer)."""
        sys.audit("http.client.connect", self, self.destination.host, self.destination.port)  # as http.client does
        self.sock = _connect_vetted(self.destination, self.deadline)
        # Headers and body may go out in two writes: without this, Nagle + delayed ACK can add 40 ms.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPConnection(_Pinned, http.client.HTTPConnection):
    def __init__(self, destination: Destination) -> None:
        super().__init__(destination.host, destination.port)
        self.destination = destination


class _PinnedHTTPSConnection(_Pinned, http.client.HTTPSConnection):
    def __init__(self, destination: Destination) -> None:
        super().__init__(destination.host, destination.port, context=tls_context())
        self.destination = destination

    def connect(self) -> None:
        super().connect()
        context: ssl.SSLContext = self._context  # type: ignore[attr-defined]
        if context.sslsocket_class is not _DeadlineSSLSocket:
            context.sslsocket_class = _DeadlineSSLSocket  # a context from elsewhere (tests): the documented hook
        self.sock.settimeout(remaining(self.deadline))  # the handshake (in wrap_socket) gets what is left
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)
        self.sock.deadline = self.deadline


def _connect_vetted(destination: Destination, deadline: float) -> _DeadlineSocket:
    """Connects to the first vetted IP that answers, at most MAX_ADDRESSES_TRIED of them.

    Each try gets an equal share of the time left (a third, then half, then the rest), so a
    black-holed first address cannot use up the time the next one needed; if all are black-holed
    the attempt still ends at its deadline, not one timeout per address later.
    """
    addresses = destination.addresses[:MAX_ADDRESSES_TRIED]
    last_error: OSError | None = None
    for index, ip in enumerate(addresses):
        share = remaining(deadline) / (len(addresses) - index)
        sock = _DeadlineSocket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.settimeout(share)
            sock.connect((ip, destination.port))
        except OSError as exc:
            sock.close()
            last_error = exc
            continue
        sock.deadline = deadline
        return sock
    assert last_error is not None
    raise last_error


_Connection = _PinnedHTTPConnection | _PinnedHTTPSConnection


class _IdleConnections(threading.local):
    def __init__(self) -> None:
        self.by_key: OrderedDict[tuple[str, str, int, str], _Connection] = OrderedDict()


_idle = _IdleConnections()


def send(
    destination: Destination, method: str, target: str, headers: dict[str, str], body: bytes | None, deadline: float
) -> Reply:
    """One request/response, all of it (connect, TLS, request, answer) over by `deadline` (time.monotonic());
    raises TimeoutError then. Reconnects once, transparently, if a kept-alive connection turns out stale.

    Replaying after a reset on a reused connection can deliver twice if the server had processed the
    request before dropping the connection; every callback carries an Idempotency-Key for exactly that
    (Go's net/http makes the same call for requests with that header).
    """
    connection = _take_idle(destination.pool_key)
    if connection is not None:
        try:
            return _round_trip(destination, connection, method, target, headers, body, deadline)
        except _STALE_CONNECTION_ERRORS:
            pass  # the server closed it between our liveness check and the request: reconnect once
    connection = _new_connection(destination)
    return _round_trip(destination, connection, method, target, headers, body, deadline)


def close_idle_connections() -> None:
    """Closes this thread's idle connections (tests, and threads about to end)."""
    while _idle.by_key:
        _, connection = _idle.by_key.popitem()
        connection.close()


def _round_trip(
    destination: Destination,
    connection: _Connection,
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes | None,
    deadline: float,
) -> Reply:
    try:
        connection.set_deadline(deadline)
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


def _new_connection(destination: Destination) -> _Connection:
    if destination.scheme == "https":
        return _PinnedHTTPSConnection(destination)
    return _PinnedHTTPConnection(destination)


def _take_idle(key: tuple[str, str, int, str]) -> _Connection | None:
    connection = _idle.by_key.pop(key, None)
    if connection is not None and not _is_still_open(connection):
        connection.close()  # the server closed it while idle (its keep-alive timeout)
        return None
    return connection


def _keep_idle(key: tuple[str, str, int, str], connection: _Connection) -> None:
    _idle.by_key[key] = connection
    _idle.by_key.move_to_end(key)
    while len(_idle.by_key) > MAX_IDLE_CONNECTIONS_PER_THREAD:
        _, oldest = _idle.by_key.popitem(last=False)
        oldest.close()


def _is_still_open(connection: _Connection) -> bool:
    """An idle connection must have nothing to read: readable means EOF (closed by the server) or junk."""
    sock = connection.sock
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)
