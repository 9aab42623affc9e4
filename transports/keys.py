"""CURVE key pairs and the directory of trusted peers.

Layout of a keys directory (default ``~/.config/edge-runtime/keys``)::

    DIR/identity.key          this device's public certificate (share it)
    DIR/identity.key_secret   its secret certificate, mode 0600 (never share it)
    DIR/trusted/<name>.key    public certificates of peers allowed to connect;
                              optional metadata ``address = tcp://host:port``

Files use ZeroMQ's certificate format, so `zmq.auth.load_certificate` and
other ZeroMQ tools read them too. A trusted certificate's ``address`` lets a
client find the server key of the agent it dials (`server_key_for`) — the user
trusts a device once, by key and address, and never pastes keys into code.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import re
import shlex
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from transports.addresses import AddressError, normalize_address
from transports.errors import SecurityError

log = logging.getLogger(__name__)

DEFAULT_KEYS_DIR = Path("~/.config/edge-runtime/keys")
IDENTITY = "identity"
TRUSTED = "trusted"
_Z85_KEY = re.compile(rb"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, both halves z85-encoded (40 bytes each)."""

    public: bytes
    secret: bytes

    def __repr__(self) -> str:  # never print a secret key into a log
        return f"KeyPair(public={self.public.decode()!r}, secret=<hidden>)"


@dataclass(frozen=True)
class TrustedKey:
    """A peer allowed to connect: its name, z85 public key and (optional) address."""

    name: str
    public: bytes
    address: str | None = None


def generate_keypair() -> KeyPair:
    """A fresh in-memory key pair (for tests and ephemeral deployments)."""
    public, secret = zmq.curve_keypair()
    return KeyPair(public, secret)


def check_public_key(key: bytes | str) -> bytes:
    """Return `key` as z85 bytes, or raise SecurityError if it is not a 40-char z85 key."""
    raw = key.encode("ascii", "replace") if isinstance(key, str) else key
    raw = raw.strip()
    if not _Z85_KEY.match(raw):
        raise SecurityError(
            f"{raw[:60]!r} is not a CURVE public key (40 z85 characters); "
            "copy it from `edge-runtime keys show` on the other device"
        )
    return raw


def _normalized(address: str) -> str:
    """`normalize_address`, failing as the SecurityError every key lookup raises."""
    try:
        return normalize_address(address)
    except AddressError as error:
        raise SecurityError(str(error)) from None


def _write_cert(
    path: Path,
    public: bytes,
    secret: bytes | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    kind = "Secret" if secret else "Public"
    lines = [
        f"#   ****  Generated on {datetime.datetime.now():%Y-%m-%d %H:%M:%S} by edge-runtime  ****",
        f"#   ZeroMQ CURVE {kind} Certificate",
        "#   " + ("DO NOT PROVIDE THIS FILE TO OTHER USERS." if secret else "Exchange freely."),
        "",
        "metadata",
    ]
    for key, value in (metadata or {}).items():
        lines.append(f'    {key} = "{value}"')
    lines += ["curve", f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    text = "\n".join(lines) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(tmp, flags, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    if secret:
        os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _read_cert(path: Path) -> tuple[bytes, bytes | None, dict[str, str]]:
    """(public, secret or None, metadata) of a certificate file; SecurityError if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SecurityError(f"cannot read certificate {path}: {error}") from None
    public: bytes | None = None
    secret: bytes | None = None
    metadata: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if "=" not in stripped:
            section = stripped
            continue
        key, value = (part.strip() for part in stripped.split("=", 1))
        value = value.strip("'\"")
        if section == "curve" and key == "public-key":
            public = value.encode()
        elif section == "curve" and key == "secret-key":
            secret = value.encode()
        elif section == "metadata":
            metadata[key] = value
    if public is None:
        raise SecurityError(f"certificate {path} holds no public key")
    check_public_key(public)
    if secret is not None and not _Z85_KEY.match(secret):
        raise SecurityError(f"certificate {path} holds a malformed secret key")
    return public, secret, metadata


def init_keys(directory: str | os.PathLike[str], *, overwrite: bool = False) -> KeyPair:
    """Create this device's key pair in `directory` (and its empty trusted/ folder)."""
    base = Path(directory).expanduser()
    public_file = base / f"{IDENTITY}.key"
    secret_file = base / f"{IDENTITY}.key_secret"
    if secret_file.exists() and not overwrite:
        raise SecurityError(
            f"{secret_file} already exists; pass overwrite=True (`edge-runtime keys init "
            "--overwrite`) to replace it — peers that trusted the old key must trust the new one"
        )
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    (base / TRUSTED).mkdir(exist_ok=True, mode=0o700)
    pair = generate_keypair()
    _write_cert(public_file, pair.public)
    _write_cert(secret_file, pair.public, pair.secret)
    log.info("created CURVE key pair in %s (public key %s)", base, pair.public.decode())
    return pair


def load_keypair(directory: str | os.PathLike[str]) -> KeyPair:
    """Load this device's key pair; SecurityError telling how to create it if missing."""
    base = Path(directory).expanduser()
    secret_file = base / f"{IDENTITY}.key_secret"
    if not secret_file.exists():
        raise SecurityError(
            f"no key pair in {base}; create one with `edge-runtime keys init --dir {base}`"
        )
    mode = secret_file.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s is readable by others (mode %o); run chmod 600 on it", secret_file, mode)
    public, secret, _ = _read_cert(secret_file)
    if secret is None:
        raise SecurityError(f"{secret_file} holds no secret key; re-create it with keys init")
    return KeyPair(public, secret)


def trust(
    directory: str | os.PathLike[str],
    public_key: bytes | str,
    name: str,
    address: str | None = None,
) -> Path:
    """Trust `public_key` under `name` (and optionally its server `address`); returns the file."""
    key = check_public_key(public_key)
    if not _NAME.match(name):
        raise SecurityError(
            f"trusted-key name {name!r} must be 1-64 letters, digits, '.', '_' or '-'"
        )
    if address is not None:
        address = _normalized(address)
    folder = Path(directory).expanduser() / TRUSTED
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{name}.key"
    _write_cert(path, key, metadata={"address": address} if address else None)
    log.info("trusted %s as %s%s", key.decode(), name, f" at {address}" if address else "")
    return path


def trusted_keys(directory: str | os.PathLike[str]) -> dict[str, TrustedKey]:
    """Every trusted peer in `directory`/trusted, by name. Unreadable files are skipped
    with a warning, so one bad file does not lock every peer out."""
    return trusted_keys_in(Path(directory).expanduser() / TRUSTED)


def trusted_keys_in(folder: Path) -> dict[str, TrustedKey]:
    """Every ``*.key`` certificate in `folder`, by name (see `trusted_keys`)."""
    found: dict[str, TrustedKey] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.key")):
        try:
            public, _, metadata = _read_cert(path)
        except SecurityError as error:
            log.warning("skipping trusted certificate: %s", error)
            continue
        address = metadata.get("address") or None
        if address is not None:
            try:
                address = normalize_address(address)
            except AddressError as error:  # kept as written: it still names the peer
                log.warning("trusted certificate %s: %s", path, error)
        found[path.stem] = TrustedKey(path.stem, public, address)
    return found


def server_key_for(directory: str | os.PathLike[str], address: str) -> bytes:
    """The public key of the server at `address`, from the trusted certificates."""
    return server_key_in(Path(directory).expanduser() / TRUSTED, address)


def server_key_in(folder: Path, address: str) -> bytes:
    """The public key registered for `address` (any form `normalize_address` reads)
    among the certificates in `folder`."""
    address = _normalized(address)
    for trusted_key in trusted_keys_in(folder).values():
        if trusted_key.address == address:
            return trusted_key.public
    raise SecurityError(
        f"no trusted key for {address} in {folder}; on that "
        "device run `edge-runtime keys show`, then here run `edge-runtime keys trust "
        f"<its public key> --name <device> --address {shlex.quote(address)}`"
    )


def read_public_certificate(path: str | os.PathLike[str]) -> bytes:
    """The public key in a certificate file (e.g. another device's identity.key)."""
    public, _, _ = _read_cert(Path(path).expanduser())
    return public


# --- telling a user how to fix a refused or failed handshake ---
#
# Z85 keys contain shell metacharacters (& * $ ! ( < > /), so every command shown
# to a user is built with shlex and pastes into a POSIX shell as it is.

FINGERPRINT_CHARS = 6
"""Hex digits of a key fingerprint: enough to tell a room of devices apart
(a clash among 20 devices is ~1 in 100,000), short enough for a name."""


def key_fingerprint(public_key: bytes | str) -> str:
    """A short, stable hex tag of a public key (sha256 of its z85 text), e.g. ``3fa9c1``."""
    raw = public_key.encode() if isinstance(public_key, str) else public_key
    return hashlib.sha256(raw.strip()).hexdigest()[:FINGERPRINT_CHARS]


def device_name(host: str | None = None) -> str:
    """`host` (default: this machine's host name) as a valid trusted-key name:
    its first DNS label, other characters turned into ``-``, at most 64."""
    label = (host if host is not None else socket.gethostname()).split(".")[0]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", label).lstrip("._-")[:64]
    return cleaned or "device"


def trust_command(public_key: bytes | str, name: str, address: str | None = None) -> str:
    """The exact `edge-runtime keys trust` command for `public_key`, shell-quoted.

    The key comes last, after ``--``: a Z85 key may begin with ``-``, which argparse
    would otherwise take for an option. Pure formatting: it never raises, so a ZAP
    callback may call it on any key.
    """
    key = public_key.decode(errors="replace") if isinstance(public_key, bytes) else public_key
    parts = ["edge-runtime", "keys", "trust", "--name", name]
    if address:
        parts += ["--address", address]
    return shlex.join([*parts, "--", key.strip()])


def key_refused_message(
    agent: str, address: str, client_key: bytes | str, client_name: str | None = None
) -> str:
    """What a client says when agent `agent` refused its key during the handshake
    (`agent` may be "" or the address itself when its name is not known yet)."""
    who, where = (f"agent {agent}", agent) if agent and agent != address else ("the agent", "it")
    return (
        f"{who} at {address} does not trust this machine's key; on {where} run: "
        + trust_command(client_key, client_name or device_name())
    )


def server_key_mismatch_message(address: str, trusted_name: str | None = None) -> str:
    """What a CURVE client says when the server dropped its handshake unanswered: the
    key trusted for `address` is not the agent's (or no agent listens there)."""
    name = shlex.quote(trusted_name) if trusted_name else "NAME"
    return (
        f"the key trusted for {address} is not that agent's key (or what listens there is "
        "not an edge-runtime agent): on the agent run `edge-runtime keys show` and trust "
        f"the key it prints: `edge-runtime keys trust KEY --name {name} --address "
        f"{shlex.quote(address)}`"
    )


def security_mismatch_message(address: str, client_insecure: bool) -> str:
    """What a client says when one side runs CURVE and the other runs --insecure."""
    other = "uses CURVE keys" if client_insecure else "runs --insecure"
    here = "insecure" if client_insecure else "CURVE"
    return (
        f"one side runs --insecure: this machine connects with {here} security and the agent "
        f"at {address} {other}; start both with keys (the default) or both with --insecure "
        "(insecure=True in er.connect)"
    )


@dataclass
class RefusalLog:
    """Which refused CURVE keys an agent logs, and the line it logs for each.

    Each key is logged at most once per `per_key_s`, and at most `max_keys`
    distinct keys per `per_key_s`, so a scanner cycling keys cannot flood the log
    (or memory: at most `max_keys` keys are remembered); what was not logged is
    counted in the next line. `refused` counts every refusal.
    """

    per_key_s: float = 60.0
    max_keys: int = 20
    refused: int = 0
    _logged: dict[bytes, float] = field(default_factory=dict)
    _unlogged: int = 0

    def note(self, key: bytes, now: float | None = None) -> str | None:
        """Record one refusal of `key` (z85); the warning to log, or None to stay quiet."""
        now = time.monotonic() if now is None else now
        self.refused += 1
        last = self._logged.get(key)
        if last is not None and now - last < self.per_key_s:
            self._unlogged += 1
            return None
        if len(self._logged) >= self.max_keys:
            self._logged = {k: t for k, t in self._logged.items() if now - t < self.per_key_s}
            if len(self._logged) >= self.max_keys:
                self._unlogged += 1
                return None
        self._logged[key] = now
        text = key.decode(errors="replace")
        line = (
            f"refused a connection from untrusted key {text}; if it is a machine of yours, "
            f"trust it here with: {trust_command(text, 'client-' + key_fingerprint(key))}"
        )
        if self._unlogged:
            line += f" ({self._unlogged} repeated or other refusals not logged)"
            self._unlogged = 0
        return line
