"""The fix commands shown to users paste into a shell as they are, and an agent's
log of refused keys stays short under a scan."""

from __future__ import annotations

import shlex

import pytest

from transports.keys import (
    RefusalLog,
    device_name,
    generate_keypair,
    key_fingerprint,
    key_refused_message,
    security_mismatch_message,
    server_key_mismatch_message,
    trust_command,
)

# Z85 keys made of the characters a shell treats specially.
NASTY_KEYS = [
    "&*$!()<>/&*$!()<>/&*$!()<>/&*$!()<>/ab;c",
    "$(touch x)`.?[]{}@%#^=+-:aaaaaaaaaaaaaaa",
]


@pytest.mark.parametrize("key", [*NASTY_KEYS, generate_keypair().public.decode()])
def test_trust_command_survives_a_shell(key: str) -> None:
    command = trust_command(key, "my laptop", "tcp://10.0.0.2:7700")
    assert shlex.split(command) == [
        "edge-runtime", "keys", "trust", "--name", "my laptop",
        "--address", "tcp://10.0.0.2:7700", "--", key,
    ]
    assert "--address" not in trust_command(key, "pi")


def test_refused_key_message_names_the_agent_and_the_exact_command() -> None:
    key = NASTY_KEYS[0]
    message = key_refused_message("pi-kitchen", "tcp://10.0.0.2:7700", key.encode(), "laptop")
    prefix = ("agent pi-kitchen at tcp://10.0.0.2:7700 does not trust this machine's key; "
              "on pi-kitchen run: ")
    assert message.startswith(prefix)
    assert shlex.split(message.removeprefix(prefix)) == [
        "edge-runtime", "keys", "trust", "--name", "laptop", "--", key]
    unnamed = key_refused_message("tcp://h:1", "tcp://h:1", key, "laptop")
    assert unnamed.startswith(
        "the agent at tcp://h:1 does not trust this machine's key; on it run: ")


def test_other_mismatch_messages_say_what_to_do() -> None:
    wrong = server_key_mismatch_message("tcp://10.0.0.2:7700", "pi")
    assert "not that agent's key" in wrong and "edge-runtime keys show" in wrong
    assert "--name pi --address tcp://10.0.0.2:7700" in wrong
    assert "agent at tcp://h:1 runs --insecure" in security_mismatch_message("tcp://h:1", False)
    assert "agent at tcp://h:1 uses CURVE keys" in security_mismatch_message("tcp://h:1", True)


def test_device_name_is_a_valid_trusted_key_name() -> None:
    assert device_name("raspberrypi.local") == "raspberrypi"
    assert device_name("Dana's MacBook") == "Dana-s-MacBook"
    assert device_name("...") == "device"
    assert device_name()  # this machine's


def test_fingerprint_is_short_stable_and_tells_keys_apart() -> None:
    a, b = generate_keypair().public, generate_keypair().public
    assert key_fingerprint(a) == key_fingerprint(a.decode()) and len(key_fingerprint(a)) == 6
    assert key_fingerprint(a) != key_fingerprint(b)


def test_refusal_log_once_per_key_per_minute_and_bounded_under_a_scan() -> None:
    log = RefusalLog(per_key_s=60, max_keys=3)
    key = generate_keypair().public
    first = log.note(key, now=0.0)
    assert first is not None and trust_command(key, "client-" + key_fingerprint(key)) in first
    assert log.note(key, now=30.0) is None  # the same key within the minute: quiet
    scan = [generate_keypair().public for _ in range(10)]
    lines = [log.note(k, now=31.0) for k in scan]
    assert sum(line is not None for line in lines) == 2  # 3 keys remembered at most
    assert "(1 repeated or other refusals not logged)" in str(lines[0])
    later = log.note(key, now=61.0)  # the minute is over: logged again, with the count
    assert later is not None and "(8 repeated or other refusals not logged)" in later
    assert log.refused == 13
