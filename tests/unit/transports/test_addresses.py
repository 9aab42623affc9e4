"""One address normaliser for the CLI, `keys trust` and `er.connect`, and the
trusted-key lookups that rely on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from transports.addresses import AddressError, normalize_address
from transports.errors import SecurityError
from transports.keys import generate_keypair, server_key_for, trust, trusted_keys


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("10.0.0.2", "tcp://10.0.0.2:7700"),
        ("10.0.0.2:7711", "tcp://10.0.0.2:7711"),
        (" tcp://pi.local:7702 ", "tcp://pi.local:7702"),
        ("tcp://pi.local", "tcp://pi.local:7700"),
        ("[::1]:7700", "tcp://[::1]:7700"),
        ("[fe80::1]", "tcp://[fe80::1]:7700"),
    ],
)
def test_every_form_the_cli_takes_becomes_one_spelling(text: str, want: str) -> None:
    assert normalize_address(text) == want
    assert normalize_address(want) == want  # idempotent


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (":7700", "has no host"),
        ("pi:http", "is not a number"),
        ("pi:+77", "is not a number"),
        ("pi:7_7", "is not a number"),
        ("pi:70000", "outside 1..65535"),
        ("pi:0", "outside 1..65535"),
        ("udp://pi:1", "only tcp://"),
        ("::1:7700", "IPv6 host in brackets"),
        ("[::1:7700", "missing ']'"),
        ("my host:7700", "whitespace"),
    ],
)
def test_bad_addresses_are_named_in_the_error(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=message) as info:
        normalize_address(text)
    assert repr(text.strip()) in str(info.value)


def test_a_key_trusted_under_one_form_is_found_under_every_other(tmp_path: Path) -> None:
    agent = generate_keypair()
    trust(tmp_path, agent.public, "pi", address="10.0.0.2")  # what the CLI passes through
    assert trusted_keys(tmp_path)["pi"].address == "tcp://10.0.0.2:7700"
    for form in ("10.0.0.2", "10.0.0.2:7700", "tcp://10.0.0.2:7700", " tcp://10.0.0.2 "):
        assert server_key_for(tmp_path, form) == agent.public
    with pytest.raises(SecurityError, match=r"no trusted key for tcp://10\.0\.0\.2:7701"):
        server_key_for(tmp_path, "10.0.0.2:7701")
    with pytest.raises(SecurityError, match="only tcp://"):
        server_key_for(tmp_path, "ipc:///tmp/agent")


def test_certificates_written_with_another_spelling_are_read_normalised(tmp_path: Path) -> None:
    """A certificate written by hand (or by an older version) with a bare host:port
    still names the agent, and one with an unreadable address is kept as written."""
    agent = generate_keypair()
    folder = tmp_path / "trusted"
    folder.mkdir()
    for name, address in (("pi", "10.0.0.3:7800"), ("odd", "ipc:///tmp/agent")):
        (folder / f"{name}.key").write_text(
            f'metadata\n    address = "{address}"\ncurve\n'
            f'    public-key = "{agent.public.decode()}"\n'
        )
    found = trusted_keys(tmp_path)
    assert found["pi"].address == "tcp://10.0.0.3:7800"
    assert found["odd"].address == "ipc:///tmp/agent"
    assert server_key_for(tmp_path, "tcp://10.0.0.3:7800") == agent.public
