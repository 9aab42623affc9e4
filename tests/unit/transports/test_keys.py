"""Keys directory: creation, loading, trusting, lookups by address, and the CLI."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zmq.auth

from edge_runtime.cli.main import main
from transports.errors import SecurityError
from transports.keys import (
    init_keys,
    load_keypair,
    read_public_certificate,
    server_key_for,
    trust,
    trusted_keys,
)
from transports.security import Security


def test_init_creates_zmq_certificates_with_a_private_secret(tmp_path: Path) -> None:
    pair = init_keys(tmp_path / "k")
    secret_file = tmp_path / "k" / "identity.key_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    public, secret = zmq.auth.load_certificate(secret_file)
    assert (public, secret) == (pair.public, pair.secret)
    assert zmq.auth.load_certificate(tmp_path / "k" / "identity.key") == (pair.public, None)
    assert load_keypair(tmp_path / "k") == pair
    assert "secret" in repr(pair) and pair.secret.decode() not in repr(pair)


def test_init_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    first = init_keys(tmp_path)
    with pytest.raises(SecurityError, match="--overwrite"):
        init_keys(tmp_path)
    second = init_keys(tmp_path, overwrite=True)
    assert second != first and load_keypair(tmp_path) == second


def test_missing_keys_say_how_to_create_them(tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match="edge-runtime keys init"):
        load_keypair(tmp_path)
    with pytest.raises(SecurityError, match="edge-runtime keys init"):
        Security.from_dir(tmp_path)


def test_trust_and_look_up_by_address(tmp_path: Path) -> None:
    peer = init_keys(tmp_path / "peer")
    path = trust(tmp_path, peer.public, "pi-kitchen", address="tcp://10.0.0.2:7700")
    assert zmq.auth.load_certificate(path)[0] == peer.public
    other = init_keys(tmp_path / "other")
    trust(tmp_path, other.public.decode(), "phone")
    found = trusted_keys(tmp_path)
    assert set(found) == {"pi-kitchen", "phone"}
    assert found["pi-kitchen"].address == "tcp://10.0.0.2:7700"
    assert found["phone"].address is None
    assert server_key_for(tmp_path, "tcp://10.0.0.2:7700") == peer.public
    with pytest.raises(SecurityError, match=r"edge-runtime keys trust .*tcp://10\.0\.0\.9:1"):
        server_key_for(tmp_path, "tcp://10.0.0.9:1")


def test_zmq_written_certificates_are_trusted_too(tmp_path: Path) -> None:
    (tmp_path / "trusted").mkdir()
    public_file, _ = zmq.auth.create_certificates(tmp_path / "trusted", "made-by-zmq")
    assert trusted_keys(tmp_path)["made-by-zmq"].public == read_public_certificate(public_file)


@pytest.mark.parametrize(
    ("key", "name", "address", "match"),
    [
        ("short", "a", None, "not a CURVE public key"),
        ("x" * 40, "../escape", None, "name"),
        ("x" * 40, "a", "udp://10.0.0.1:7700", "only tcp://"),
        ("x" * 40, "a", "10.0.0.1:http", "not a number"),
    ],
)
def test_trust_validates_its_input(
    tmp_path: Path, key: str, name: str, address: str | None, match: str
) -> None:
    with pytest.raises(SecurityError, match=match):
        trust(tmp_path, key, name, address)


def test_a_corrupt_trusted_file_is_skipped_not_fatal(tmp_path: Path) -> None:
    peer = init_keys(tmp_path / "peer")
    trust(tmp_path, peer.public, "good")
    (tmp_path / "trusted" / "bad.key").write_text("curve\n    public-key = \"nope\"\n")
    assert set(trusted_keys(tmp_path)) == {"good"}


def test_cli_init_show_trust(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["keys", "--dir", str(a), "init"]) == 0
    assert main(["keys", "--dir", str(b), "init"]) == 0
    capsys.readouterr()
    assert main(["keys", "--dir", str(a), "show"]) == 0
    shown = capsys.readouterr().out
    key_a = load_keypair(a).public.decode()
    assert key_a in shown and "edge-runtime keys trust" in shown
    assert main(["keys", "--dir", str(b), "trust", "--name", "a",
                 "--address", "tcp://127.0.0.1:7700", "--", key_a]) == 0
    assert server_key_for(b, "tcp://127.0.0.1:7700").decode() == key_a
    # a certificate file works in place of the key text
    assert main(["keys", "--dir", str(a), "trust", str(b / "identity.key"), "--name", "b"]) == 0
    assert trusted_keys(a)["b"].public == load_keypair(b).public
    assert main(["keys", "--dir", str(a), "init"]) == 1  # refuses to overwrite, no traceback
    assert "--overwrite" in capsys.readouterr().err


def test_cli_takes_dir_after_the_action_too(tmp_path: Path) -> None:
    """`keys init --dir X` is how people type it; it must not land in the default dir."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["keys", "init", "--dir", str(a)]) == 0
    assert main(["keys", "init", "--dir", str(b)]) == 0
    key_a = load_keypair(a).public.decode()
    assert main(["keys", "trust", "--name", "a", "--dir", str(b), "--", key_a]) == 0
    assert trusted_keys(b)["a"].public.decode() == key_a
    assert main(["keys", "show", "--dir", str(a)]) == 0
