"""Finding agents: a static address list always works; mDNS is an optional extra.

Home and lab networks differ: some pass multicast (then agents announce themselves
with mDNS/DNS-SD and a coordinator browses for them), many guest and corporate
networks drop it. So a static list of `host:port` addresses is the primary way and
needs nothing installed; `zeroconf` is imported only when mDNS is asked for, with a
clear error (`pip install 'edge-runtime[discovery]'`) when it is missing.

An announcement carries the agent's control endpoint and a few TXT properties
(preset, version, the CURVE public key) so a coordinator can trust an agent it
browsed without a second round trip; trusting the key is still the user's choice.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from edge_runtime.errors import ConfigError
from transports.addresses import DEFAULT_PORT, AddressError, normalize_address

log = logging.getLogger(__name__)

SERVICE_TYPE = "_edge-runtime._tcp.local."
"""DNS-SD service type agents announce under."""

BROWSE_TIMEOUT_S = 3.0
"""How long `browse` listens for announcements. mDNS responders answer a query
within ~120 ms plus random delay and re-announce at 1 s, 2 s, 4 s..., so 3 s sees
every agent that is up on a working multicast network without stalling startup."""

RESOLVE_TIMEOUT_S = 1.5
"""How long to wait for one found service's address and port (SRV/A records)."""

INSTALL_HINT = (
    "mDNS discovery needs the optional `zeroconf` package: "
    "`pip install 'edge-runtime[discovery]'`, or pass a static list of agent addresses"
)

_MAX_INSTANCE_NAME = 63  # DNS label limit


@dataclass(frozen=True)
class AgentAddress:
    """One agent found on the network: its control endpoint and announced properties."""

    endpoint: str
    name: str = ""
    properties: Mapping[str, str] = field(default_factory=dict)


def parse_endpoint(text: str, default_port: int = DEFAULT_PORT) -> str:
    """Normalise `host`, `host:port` or `tcp://host:port` to `tcp://host:port`.

    The one normaliser is `transports.addresses.normalize_address` (keys and the
    SDK use it too); this raises its error as a `ConfigError`, naming the bad entry.
    """
    try:
        return normalize_address(text, default_port)
    except AddressError as error:
        raise ConfigError(str(error)) from None


def parse_endpoints(spec: str | Iterable[str], default_port: int = DEFAULT_PORT) -> list[str]:
    """A comma-separated string or a list of addresses, normalised, in order, without repeats."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    endpoints: list[str] = []
    for item in items:
        if not item.strip():
            continue
        endpoint = parse_endpoint(item, default_port)
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    return endpoints


def zeroconf_available() -> bool:
    """True if the optional `zeroconf` package can be imported."""
    try:
        import zeroconf  # noqa: F401
    except ImportError:
        return False
    return True


def _zeroconf() -> Any:
    try:
        import zeroconf
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return zeroconf


def _open(interfaces: Sequence[str] | None) -> Any:
    """A Zeroconf instance on IPv4, on the given interface addresses (None: all)."""
    zc = _zeroconf()
    chosen = zc.InterfaceChoice.All if interfaces is None else list(interfaces)
    try:
        return zc.Zeroconf(interfaces=chosen, ip_version=zc.IPVersion.V4Only)
    except OSError as error:
        raise ConfigError(
            f"cannot open mDNS sockets on {interfaces or 'all interfaces'}: {error}; "
            "use a static list of agent addresses instead"
        ) from error


def _local_ipv4_addresses() -> list[str]:
    """This host's non-loopback IPv4 addresses (what to announce for a 0.0.0.0 bind)."""
    import psutil

    found = [
        addr.address
        for addrs in psutil.net_if_addrs().values()
        for addr in addrs
        if addr.family == socket.AF_INET and not addr.address.startswith("127.")
    ]
    return sorted(set(found)) or ["127.0.0.1"]


def default_instance_name(port: int) -> str:
    """`edge-runtime-<hostname>-<port>`, cut to the DNS label limit."""
    host = socket.gethostname().split(".")[0] or "agent"
    suffix = f"-{port}"
    return ("edge-runtime-" + host)[: _MAX_INSTANCE_NAME - len(suffix)] + suffix


class Announcer:
    """Announces one agent's control endpoint over mDNS until closed.

    `addresses` are the IPv4 addresses to publish (default: every non-loopback
    address of this host, right for an agent bound to 0.0.0.0); `interfaces`
    limits which interfaces mDNS traffic uses (default: all).
    """

    def __init__(
        self,
        port: int,
        name: str | None = None,
        addresses: Sequence[str] | None = None,
        properties: Mapping[str, str] | None = None,
        interfaces: Sequence[str] | None = None,
    ) -> None:
        zc = _zeroconf()
        self.name = name or default_instance_name(port)
        if len(self.name.encode()) > _MAX_INSTANCE_NAME or "." in self.name:
            raise ConfigError(
                f"mDNS instance name {self.name!r} must be at most 63 bytes and contain no '.'"
            )
        self.addresses = list(addresses) if addresses else _local_ipv4_addresses()
        try:
            packed = [socket.inet_aton(a) for a in self.addresses]
        except OSError:
            raise ConfigError(
                f"announce addresses must be IPv4 literals, got {self.addresses}"
            ) from None
        self._info = zc.ServiceInfo(
            SERVICE_TYPE,
            f"{self.name}.{SERVICE_TYPE}",
            addresses=packed,
            port=port,
            properties=dict(properties or {}),
            server=f"{self.name}.local.",
        )
        self._zc = _open(interfaces)
        try:
            # allow_name_change: two agents on one host with the same name get "-2" etc.
            self._zc.register_service(self._info, allow_name_change=True)
        except Exception as error:
            self._zc.close()
            raise ConfigError(f"mDNS announcement of {self.name!r} failed: {error}") from error
        self._closed = False
        log.info("announcing %s on %s port %d", self.name, self.addresses, port)

    def close(self) -> None:
        """Send a goodbye (so browsers drop this agent at once) and close the sockets."""
        if self._closed:
            return
        self._closed = True
        try:
            self._zc.unregister_service(self._info)
        finally:
            self._zc.close()

    def __enter__(self) -> Announcer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _decode(properties: Mapping[bytes, bytes | None]) -> dict[str, str]:
    return {
        key.decode(errors="replace"): (value or b"").decode(errors="replace")
        for key, value in properties.items()
    }


def browse(
    timeout_s: float = BROWSE_TIMEOUT_S,
    interfaces: Sequence[str] | None = None,
    service_type: str = SERVICE_TYPE,
) -> list[AgentAddress]:
    """Agents announcing themselves on the network, sorted by name.

    Listens for `timeout_s`, then resolves each name found; an agent that vanishes
    before it resolves is skipped. An empty list means none answered (or multicast
    is blocked on this network: then use a static address list).
    """
    zc = _zeroconf()
    names: set[str] = set()
    lock = threading.Lock()

    def on_change(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        del zeroconf, service_type
        with lock:
            if state_change is zc.ServiceStateChange.Removed:
                names.discard(name)
            else:
                names.add(name)

    instance = _open(interfaces)
    try:
        browser = zc.ServiceBrowser(instance, service_type, handlers=[on_change])
        time.sleep(timeout_s)
        browser.cancel()
        with lock:
            found = sorted(names)
        agents: list[AgentAddress] = []
        for name in found:
            info = instance.get_service_info(
                service_type, name, timeout=int(RESOLVE_TIMEOUT_S * 1000)
            )
            if info is None or not info.parsed_addresses(zc.IPVersion.V4Only):
                log.info("mDNS: %s did not resolve; skipped", name)
                continue
            host = info.parsed_addresses(zc.IPVersion.V4Only)[0]
            agents.append(
                AgentAddress(
                    endpoint=f"tcp://{host}:{info.port}",
                    name=name.removesuffix("." + service_type),
                    properties=_decode(info.properties),
                )
            )
        log.info("mDNS: found %d agent(s)", len(agents))
        return agents
    finally:
        instance.close()


def discover(
    static: str | Iterable[str] | None = None,
    mdns: bool = False,
    timeout_s: float = BROWSE_TIMEOUT_S,
    interfaces: Sequence[str] | None = None,
) -> list[str]:
    """Agent endpoints: the static ones first, then any mDNS found that are not listed.

    Raises `ConfigError` if the result is empty, saying how to give addresses.
    """
    endpoints = parse_endpoints(static) if static is not None else []
    if mdns:
        for agent in browse(timeout_s, interfaces):
            if agent.endpoint not in endpoints:
                endpoints.append(agent.endpoint)
    if not endpoints:
        raise ConfigError(
            "no agents: pass their addresses (e.g. --connect 10.0.0.2:7700,10.0.0.3:7700)"
            + (f"; mDNS found none within {timeout_s:.1f} s" if mdns else "")
        )
    return endpoints


__all__ = [
    "BROWSE_TIMEOUT_S",
    "DEFAULT_PORT",
    "INSTALL_HINT",
    "RESOLVE_TIMEOUT_S",
    "SERVICE_TYPE",
    "AgentAddress",
    "Announcer",
    "browse",
    "default_instance_name",
    "discover",
    "parse_endpoint",
    "parse_endpoints",
    "zeroconf_available",
]
