"""Outbound connections to addresses that a *request* names (the http tool's URL, an MCP server
URL, an LLM node's `base_url`): server-side request forgery protection.

Every connection resolves the host, checks **all** of its addresses, and then connects to one of
the checked addresses itself — so there is no window between the check and the connection for a
DNS answer to change (rebinding). Refused unless the setting `http_allowed_networks` lists them:
loopback, private, link-local, multicast, unspecified, reserved and every other non-global
address (IPv4-mapped and NAT64 IPv6 forms are unwrapped first); cloud-metadata addresses are
refused even inside an allowed network unless that exact address is listed.

The guard lives in the HTTP client's network backend (`guarded_client`), so it applies to every
connection the client makes — redirects included. TLS still verifies the certificate against the
host *name*. It must not trust proxies from the environment (they would connect for us).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore2
import httpx2

from nodes.provider_http import shared_ssl_context

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",   # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
    "169.254.170.2",     # AWS ECS task metadata
    "fd00:ec2::254",     # AWS over IPv6
    "100.100.100.200",   # Alibaba Cloud
    "192.0.0.192",       # Oracle Cloud
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefused(Exception):
    """A request-given URL resolves to an address this server may not connect to."""

    def __init__(self, message: str):
        super().__init__(message)

    @property
    def message(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class AddressPolicy:
    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, networks: Iterable[str]) -> "AddressPolicy":
        return cls(tuple(ipaddress.ip_network(n.strip(), strict=False) for n in networks))

    def refusal(self, address: IPAddress) -> str | None:
        """Why `address` may not be reached, or None if it may."""
        address = _unwrapped(address)
        listed = [net for net in self.allowed if address in net]
        if address in METADATA:
            return None if any(net.num_addresses == 1 for net in listed) else "a cloud metadata address"
        if listed:
            return None
        for reason, flag in (("unspecified", address.is_unspecified), ("loopback", address.is_loopback),
                             ("link-local", address.is_link_local), ("multicast", address.is_multicast),
                             ("private", address.is_private), ("reserved", address.is_reserved)):
            if flag:
                return f"{'an' if reason[0] in 'aeiou' else 'a'} {reason} address"
        return None if address.is_global else "not a public address"


def _unwrapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


async def checked_addresses(host: str, port: int, policy: AddressPolicy,
                            timeout: float | None = None) -> list[str]:
    """Every address `host` resolves to, if all of them are allowed; else `AddressRefused`.
    All, not some: a name with one public and one internal address is refused."""
    try:
        addresses = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        try:
            infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM), timeout)
        except (OSError, TimeoutError) as exc:
            raise AddressRefused(f"cannot resolve host {host!r} ({type(exc).__name__})") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    for address in addresses:
        reason = policy.refusal(address)
        if reason is not None:
            shown = host if str(address) == host.strip("[]") else f"{host} ({address})"
            raise AddressRefused(f"refused to connect to {shown}: {reason}; an operator can allow "
                                 "it with SESAME_HTTP_ALLOWED_NETWORKS")
    return [str(a) for a in addresses]


class GuardedBackend(httpcore2.AsyncNetworkBackend):
    """httpcore's network backend with the check in `connect_tcp`: resolve, check all, connect
    to a checked address (TLS is then started by httpcore with the original host name)."""

    def __init__(self, policy: AddressPolicy):
        self._policy = policy
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore2.AsyncNetworkStream:
        addresses = await checked_addresses(host, port, self._policy, timeout)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore2.AsyncNetworkStream:
        raise AddressRefused("refused to connect to a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport(policy: AddressPolicy) -> httpx2.AsyncHTTPTransport:
    """An httpx2 transport whose every connection goes through `GuardedBackend`; proxies from
    the environment are ignored (they would make the connection on our behalf)."""
    tls = shared_ssl_context(trust_env=False)
    transport = httpx2.AsyncHTTPTransport(verify=tls, trust_env=False, retries=0)
    # httpx2's transport takes no network backend: swap in a pool built with ours.
    transport._pool = httpcore2.AsyncConnectionPool(  # noqa: SLF001
        ssl_context=tls,
        max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0,
        network_backend=GuardedBackend(policy))
    return transport


def guarded_client(policy: AddressPolicy, **options: Any) -> httpx2.AsyncClient:
    """An httpx2 client (no redirects followed, no proxies) guarded by `policy`."""
    return httpx2.AsyncClient(transport=guarded_transport(policy), trust_env=False,
                              follow_redirects=False, **options)


def refused_cause(exc: BaseException) -> AddressRefused | None:
    """The `AddressRefused` behind an SDK's wrapped exception (or exception group), if any."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, AddressRefused):
            return current
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        stack.extend(getattr(current, "exceptions", ()))
    return None
