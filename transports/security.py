"""CURVE on every socket, and who may connect.

Why CURVE by default: agents execute models and accept tensors from the
network; an unauthenticated socket on a home or office LAN would let anyone on
it feed inputs, read activations or shut an agent down. Every server socket is
a CURVE server whose ZAP authenticator admits only

- public keys in the trusted directory (re-read when it changes, so
  `edge-runtime keys trust` takes effect without a restart), and
- keys allowed at run time (`Authorizer.allow`): an authenticated coordinator
  introduces the other agents of a deployment, so agents accept each other's
  activations without the user trusting every pair by hand.

`Security.insecure_mode()` turns all of this off for local experiments; it is
explicit and logged, never a silent fallback.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import zmq
from zmq.auth.thread import ThreadAuthenticator

from transports import keys as _keys
from transports.errors import SecurityError
from transports.pieces import SPLIT_BYTES

log = logging.getLogger(__name__)

ZAP_DOMAIN = "edge-runtime"


@dataclass(frozen=True)
class Security:
    """How sockets are secured: CURVE with `keypair` (default) or, explicitly, not at all.

    `trusted_dir` is the folder of trusted public certificates (``DIR/trusted``);
    servers admit the keys in it, and clients look up server keys there by address.
    """

    insecure: bool = False
    keypair: _keys.KeyPair | None = None
    trusted_dir: Path | None = None

    @property
    def split_bytes(self) -> int | None:
        """How `wire.encode` should cut large tensors on sockets with this security:
        `pieces.SPLIT_BYTES` pieces under CURVE (much faster there), whole frames without
        it (one zero-copy frame is as fast or faster up to ~1 MiB unencrypted)."""
        return None if self.insecure else SPLIT_BYTES

    def __post_init__(self) -> None:
        if not self.insecure and self.keypair is None:
            raise SecurityError(
                "secure sockets need a key pair: use Security.from_dir(keys_dir) (create keys "
                "with `edge-runtime keys init`) or, for local experiments only, "
                "Security.insecure_mode()"
            )

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str] = _keys.DEFAULT_KEYS_DIR) -> Security:
        """CURVE with the key pair and trusted peers of a keys directory."""
        base = Path(directory).expanduser()
        return cls(keypair=_keys.load_keypair(base), trusted_dir=base / _keys.TRUSTED)

    @classmethod
    def insecure_mode(cls) -> Security:
        """No encryption, no authentication: for local experiments only (logged)."""
        log.warning(
            "transport security is OFF (insecure=True): traffic is unencrypted and any "
            "process that can reach the sockets may send to them"
        )
        return cls(insecure=True)

    def server_key_for(self, address: str) -> bytes:
        """The trusted public key registered for the server at `address`."""
        if self.trusted_dir is None:
            raise SecurityError(
                f"no trusted directory configured to look up the server key of {address}; "
                "pass server_public_key explicitly or use Security.from_dir(keys_dir)"
            )
        return _keys.server_key_in(self.trusted_dir, address)

    def apply_server(self, socket: zmq.Socket[bytes]) -> None:
        """Make `socket` a CURVE server (call before bind; needs an `Authorizer` running)."""
        if self.insecure:
            return
        assert self.keypair is not None
        socket.zap_domain = ZAP_DOMAIN.encode()
        socket.curve_secretkey = self.keypair.secret
        socket.curve_publickey = self.keypair.public
        socket.curve_server = True

    def apply_client(self, socket: zmq.Socket[bytes], server_public_key: bytes | None) -> None:
        """Make `socket` a CURVE client of the server holding `server_public_key`."""
        if self.insecure:
            return
        assert self.keypair is not None
        if server_public_key is None:
            raise SecurityError(
                "a secure client needs the server's public key: pass server_public_key= or "
                "trust the server with `edge-runtime keys trust KEY --name N --address ADDR`"
            )
        socket.curve_secretkey = self.keypair.secret
        socket.curve_publickey = self.keypair.public
        socket.curve_serverkey = _keys.check_public_key(server_public_key)


class Authorizer:
    """The ZAP authenticator of one ZeroMQ context: decides which CURVE clients connect.

    One ZAP handler may exist per context, so servers sharing a context share
    one `Authorizer` (`Authorizer.acquire`). It runs pyzmq's ThreadAuthenticator
    with a callback that consults run-time allowed keys and the trusted folder.
    """

    _registry: ClassVar[dict[int, tuple[Authorizer, int]]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], security: Security) -> None:
        self._context = context
        self._security = security
        self._lock = threading.Lock()
        self._allowed: dict[bytes, int] = {}  # run-time allowed key -> how many owners
        self._trusted: frozenset[bytes] = frozenset()
        self._trusted_stamp: tuple[float, int] | None = None
        self._auth = ThreadAuthenticator(context, log=logging.getLogger(f"{__name__}.zap"))
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self)
        self._refusals = _keys.RefusalLog()

    @classmethod
    def acquire(cls, context: zmq.Context[zmq.Socket[bytes]], security: Security) -> Authorizer:
        """The context's authorizer, created on first use; pair with `release`."""
        with cls._registry_lock:
            entry = cls._registry.get(id(context))
            if entry is None:
                authorizer = cls(context, security)
                cls._registry[id(context)] = (authorizer, 1)
                return authorizer
            authorizer, count = entry
            cls._registry[id(context)] = (authorizer, count + 1)
            return authorizer

    def release(self) -> None:
        """Drop one reference; the last one stops the authenticator thread."""
        with self._registry_lock:
            entry = self._registry.get(id(self._context))
            if entry is None or entry[0] is not self:
                return
            if entry[1] > 1:
                self._registry[id(self._context)] = (self, entry[1] - 1)
                return
            del self._registry[id(self._context)]
        self._auth.stop()

    def allow(self, public_key: bytes | str) -> None:
        """Admit `public_key` from now on (e.g. a peer introduced by the coordinator).

        Counted: each `allow` needs its own `revoke`, so two coordinator sessions that
        introduced the same peer can end independently without cutting each other off.
        """
        key = _keys.check_public_key(public_key)
        with self._lock:
            self._allowed[key] = self._allowed.get(key, 0) + 1

    def revoke(self, public_key: bytes | str) -> None:
        """Undo one `allow` of a run-time key; the last one stops admitting it (connections
        already made stay until they drop)."""
        key = _keys.check_public_key(public_key)
        with self._lock:
            count = self._allowed.get(key, 0)
            if count <= 1:
                self._allowed.pop(key, None)
            else:
                self._allowed[key] = count - 1

    @property
    def refused(self) -> int:
        """How many connection attempts were refused (for tests and diagnostics)."""
        return self._refusals.refused

    def is_allowed(self, public_key: bytes) -> bool:
        with self._lock:
            if public_key in self._allowed:
                return True
        return public_key in self._trusted_keys()

    def _trusted_keys(self) -> frozenset[bytes]:
        folder = self._security.trusted_dir
        if folder is None:
            return frozenset()
        try:
            stat = folder.stat()
            stamp = (stat.st_mtime, stat.st_ino)
        except OSError:
            return frozenset()
        if stamp != self._trusted_stamp:
            found = _keys.trusted_keys_in(folder)
            self._trusted = frozenset(key.public for key in found.values())
            self._trusted_stamp = stamp
        return self._trusted

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP callback (runs in the authenticator thread): may this z85 key connect?"""
        allowed = self.is_allowed(key)
        if not allowed:
            line = self._refusals.note(key)  # rate-limited: a scanner cannot flood the log
            if line is not None:
                log.warning("%s", line)
        return allowed
