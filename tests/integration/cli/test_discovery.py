"""Discovery: static address lists, and real mDNS announce/browse over loopback.

mDNS runs with real zeroconf sockets bound to 127.0.0.1 only, so nothing leaves
this machine.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge_runtime.discovery import (
    Announcer,
    browse,
    discover,
    parse_endpoint,
    parse_endpoints,
    zeroconf_available,
)
from edge_runtime.errors import ConfigError

LOOPBACK = ["127.0.0.1"]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("10.0.0.2", "tcp://10.0.0.2:7700"),
        ("10.0.0.2:7711", "tcp://10.0.0.2:7711"),
        (" tcp://pi.local:7702 ", "tcp://pi.local:7702"),
        ("[::1]:7700", "tcp://[::1]:7700"),
        ("[fe80::1]", "tcp://[fe80::1]:7700"),
    ],
)
def test_parse_endpoint(text: str, want: str) -> None:
    assert parse_endpoint(text) == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (":7700", "has no host"),
        ("pi:http", "is not a number"),
        ("pi:70000", "outside 1..65535"),
        ("udp://pi:1", "only tcp://"),
        ("::1:7700", "IPv6 host in brackets"),
    ],
)
def test_parse_endpoint_errors_name_the_entry(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_endpoint(text)


def test_parse_endpoints_keeps_order_and_drops_repeats() -> None:
    assert parse_endpoints("b:1, a:2,,tcp://b:1") == ["tcp://b:1", "tcp://a:2"]
    assert parse_endpoints(["x", "y:9"]) == ["tcp://x:7700", "tcp://y:9"]


def test_static_list_needs_no_zeroconf_and_empty_is_a_clear_error() -> None:
    assert discover("10.0.0.2,10.0.0.3:7800") == ["tcp://10.0.0.2:7700", "tcp://10.0.0.3:7800"]
    with pytest.raises(ConfigError, match="--connect"):
        discover([])


@pytest.mark.slow  # mDNS timing: probing, then answers rate-limited to one a second
def test_announce_browse_and_goodbye_over_loopback() -> None:
    assert zeroconf_available()
    properties = {"preset": "phone", "curve": "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"}
    with (
        Announcer(
            7791,
            name="test-agent-a",
            addresses=LOOPBACK,
            properties=properties,
            interfaces=LOOPBACK,
        ) as a,
        Announcer(7792, name="test-agent-b", addresses=LOOPBACK, interfaces=LOOPBACK),
    ):
        found = {agent.name: agent for agent in browse(timeout_s=1.5, interfaces=LOOPBACK)}
        assert found["test-agent-a"].endpoint == "tcp://127.0.0.1:7791"
        assert found["test-agent-a"].properties == properties
        assert found["test-agent-b"].endpoint == "tcp://127.0.0.1:7792"
        a.close()  # sends a goodbye: browsers must drop it at once
        merged = discover("10.9.9.9,127.0.0.1:7792", mdns=True, timeout_s=2.5, interfaces=LOOPBACK)
    # Static entries first, in order; the mDNS duplicate of b is not repeated.
    assert merged == ["tcp://10.9.9.9:7700", "tcp://127.0.0.1:7792"]


def test_bad_announce_arguments() -> None:
    with pytest.raises(ConfigError, match="IPv4 literals"):
        Announcer(7793, name="x", addresses=["pi.local"], interfaces=LOOPBACK)
    with pytest.raises(ConfigError, match="63 bytes"):
        Announcer(7793, name="a" * 70, addresses=LOOPBACK, interfaces=LOOPBACK)


def test_missing_zeroconf_is_a_config_error_with_the_install_hint() -> None:
    # A real interpreter in which `import zeroconf` fails, as on a device without it.
    code = (
        "import sys; sys.modules['zeroconf'] = None\n"
        "from edge_runtime.discovery import browse, discover, zeroconf_available\n"
        "from edge_runtime.errors import ConfigError\n"
        "assert not zeroconf_available()\n"
        "assert discover('pi:7700') == ['tcp://pi:7700']\n"
        "try:\n    browse(0.1)\nexcept ConfigError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'edge-runtime[discovery]'" in out.stdout
