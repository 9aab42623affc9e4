"""One spelling of an agent's address, whatever form the user typed.

Users write ``10.0.0.2``, ``10.0.0.2:7711`` or ``tcp://10.0.0.2:7711`` in
``--connect`` lists, in `edge-runtime keys trust --address` and in
``er.connect([...])``. All of them go through `normalize_address`, so a key
trusted under one form is found under any other (`keys.server_key_in`
compares normalised forms) and ZeroMQ is never handed a string without a
transport (``connect("10.0.0.2:7711")`` is EINVAL).
"""

from __future__ import annotations

from transports.errors import TransportError

DEFAULT_PORT = 7700
"""Control port assumed for an address written without one."""


class AddressError(TransportError, ValueError):
    """An address that cannot be read as ``[tcp://]host[:port]``; the message names it."""


def normalize_address(text: str, default_port: int = DEFAULT_PORT) -> str:
    """``host``, ``host:port`` or ``tcp://host:port`` as ``tcp://host:port``.

    IPv6 hosts are written in brackets (``[::1]:7700``). Raises `AddressError`
    naming the bad entry, so a typo in a long list is easy to find.
    """
    raw = text.strip()
    rest = raw[len("tcp://") :] if raw.startswith("tcp://") else raw
    if "://" in rest:
        raise AddressError(
            f"agent address {raw!r}: only tcp:// is supported (e.g. tcp://10.0.0.2:7700)"
        )
    if rest.startswith("["):  # [IPv6]:port
        host, bracket, port_text = rest[1:].partition("]")
        if not bracket:
            raise AddressError(f"agent address {raw!r}: missing ']' after an IPv6 host")
        port_text = port_text.removeprefix(":")
        host = f"[{host}]"
    elif rest.count(":") > 1:
        raise AddressError(
            f"agent address {raw!r}: write an IPv6 host in brackets, e.g. [::1]:7700"
        )
    else:
        host, _, port_text = rest.partition(":")
    if not host or host == "[]":
        raise AddressError(
            f"agent address {raw!r} has no host; write host:port, e.g. 10.0.0.2:7700"
        )
    if any(char.isspace() for char in host):
        raise AddressError(f"agent address {raw!r}: the host contains whitespace")
    if not port_text:
        port = default_port
    elif port_text.isascii() and port_text.isdigit():  # int() would take "+7", " 7", "7_0"
        port = int(port_text)
    else:
        raise AddressError(f"agent address {raw!r}: port {port_text!r} is not a number")
    if not 0 < port < 65536:
        raise AddressError(f"agent address {raw!r}: port {port} is outside 1..65535")
    return f"tcp://{host}:{port}"
