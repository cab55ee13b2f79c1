"""Which network destinations an http_callback may reach (server-side request forgery protection).

Anyone who can create a task chooses the callback URL, so without this check a task could reach the
cloud metadata service (169.254.169.254, fd00:ec2::254), the database or anything else inside the
VPC. Every address the host name resolves to is checked, and the caller then connects to a vetted
address itself, so a second DNS answer (DNS rebinding) can never swap in an internal address.

Local development sets AT_HTTP_ALLOW_PRIVATE=1 to call sinks on 127.0.0.1. That opens the private
ranges, CGNAT and the like, never the cloud metadata service or anything link-local (in any IPv6
spelling of them either), and on Lambda never loopback: the Lambda runtime API and extensions
listen there, so a task could otherwise answer invocations or read the function's events.
"""

from __future__ import annotations

import functools
import ipaddress
import socket

from . import resolver
from .deadlines import attempt_deadline
from .errors import ExecutionError, truncate
from .settings import private_destinations_allowed, running_on_lambda

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CLOUD_METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254"))
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, RFC 6598
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4 address
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d (RFC 4291), still parsed by stacks

# Refused even with AT_HTTP_ALLOW_PRIVATE=1 (the reasons blocked_reasons gives) ...
_ALWAYS_REFUSED = frozenset({"cloud metadata service", "link-local"})
# ... and on Lambda these as well: 0.0.0.0 and :: reach the local host too.
_REFUSED_ON_LAMBDA = frozenset({"loopback", "unspecified"})


def resolve_addresses(host: str, port: int, deadline: float | None = None) -> list[str]:
    """All addresses `host` resolves to, in the resolver's order (IP literals are returned as they are).

    Raises TimeoutError if the answer has not come by `deadline` (default: AT_HTTP_TIMEOUT_SECONDS).
    """
    if (literal := _ip_literal(host)) is not None:  # no resolver call (a syscall per callback otherwise)
        return [literal]
    try:
        infos = resolver.getaddrinfo(host, port, attempt_deadline(deadline))
    except (socket.gaierror, UnicodeError) as exc:
        raise ExecutionError(
            f"callback DNS lookup failed for {truncate(host, 100)!r}: {_lookup_failure(exc)}", detail=truncate(str(exc))
        ) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise ExecutionError(f"callback DNS lookup failed for {truncate(host, 100)!r}: no addresses")
    return addresses


def _lookup_failure(exc: socket.gaierror | UnicodeError) -> str:
    if isinstance(exc, UnicodeError):
        return "not a valid host name"
    if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
        return "no such host, or it has no addresses"
    if exc.errno == socket.EAI_AGAIN:
        return "temporary DNS failure"
    return "DNS error"


def vetted_addresses(host: str, port: int, deadline: float | None = None) -> list[str]:
    """The addresses to connect to; refuses (non-retryable) if ANY of them may not be called."""
    addresses = resolve_addresses(host, port, deadline)
    private_allowed = private_destinations_allowed()
    on_lambda = private_allowed and running_on_lambda()
    for address in addresses:
        reason = _verdict(address, private_allowed, on_lambda)
        if reason is not None:
            answers = ", ".join(addresses[:8])
            raise ExecutionError(
                _refusal(host, address, reason),
                retryable=False,
                detail=f"{truncate(host, 100)} resolved to {answers}: {address} is {reason}",
            )
    return addresses


# Both cached: pure functions of their arguments, and the same few receivers recur at thousands of
# callbacks a second (ipaddress's range checks cost ~5 µs an address).
@functools.lru_cache(maxsize=4096)
def _ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _verdict(address: str, private_allowed: bool, on_lambda: bool) -> str | None:
    return refusal_reason(ipaddress.ip_address(address), private_allowed=private_allowed, on_lambda=on_lambda)


def refusal_reason(address: IPAddress, *, private_allowed: bool, on_lambda: bool) -> str | None:
    """Why `address` may not be called back under the current settings, or None."""
    reasons = blocked_reasons(address)
    if not private_allowed:
        return reasons[0] if reasons else None
    refused = (_ALWAYS_REFUSED | _REFUSED_ON_LAMBDA) if on_lambda else _ALWAYS_REFUSED
    return next((reason for reason in reasons if reason in refused), None)


def blocked_reason(address: IPAddress) -> str | None:
    """Why `address` must not be called back, or None for a public unicast address."""
    reasons = blocked_reasons(address)
    return reasons[0] if reasons else None


def blocked_reasons(address: IPAddress) -> list[str]:
    """Every reason `address` is not public: those of the IPv4 addresses hidden in it first."""
    reasons = [reason for embedded in _embedded_ipv4(address) for reason in blocked_reasons(embedded)]
    if address in _CLOUD_METADATA:
        reasons.append("cloud metadata service")
    elif address in _NAT64:
        pass  # its IPv4 address was judged above (IPv6-only networks reach IPv4 hosts this way)
    elif (reason := _own_reason(address)) is not None:
        reasons.append(reason)
    return reasons


def _own_reason(address: IPAddress) -> str | None:
    checks = (
        (address.is_loopback, "loopback"),
        (address.is_unspecified, "unspecified"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.version == 4 and address in _SHARED_ADDRESS_SPACE, "shared address space (CGNAT)"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (address.version == 6 and address.is_site_local, "site-local"),
        (not address.is_global, "not globally routable"),
    )
    return next((reason for matches, reason in checks if matches), None)


def _embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses hidden inside an IPv6 one (mapped, compatible, 6to4, Teredo, NAT64): each must pass too."""
    if address.version == 4:
        return []
    assert isinstance(address, ipaddress.IPv6Address)
    found = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):  # not :: or ::1 themselves
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [ip for ip in found if ip is not None]


def _refusal(host: str, address: str, reason: str) -> str:
    """The stored message: the address only if the owner gave it as the URL's host (resolved ones are
    the network's business and go to the log line)."""
    if _same_address(host, address):
        return f"callback destination refused: {address} is not a public address ({reason})"
    return f"callback destination refused: {truncate(host, 100)} resolves to a non-public address ({reason})"


def _same_address(host: str, address: str) -> bool:
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(address)
    except ValueError:
        return False
