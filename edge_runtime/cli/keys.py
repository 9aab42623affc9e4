"""`edge-runtime keys init|show|trust`: this device's CURVE keys and the peers it trusts.

Typical setup of two devices A and B::

    A$ edge-runtime keys init            # once per device
    A$ edge-runtime keys show            # prints A's public key and a trust command
    B$ edge-runtime keys trust --name A --address 10.0.0.2:7700 -- 'KEY'

After this, B's clients find A's server key by its address, and A's servers
admit B once A trusts B's key the same way.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_DIR = Path("~/.config/edge-runtime/keys")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help=f"keys directory (default: {DEFAULT_DIR})",
    )
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="create this device's key pair")
    init.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing key pair (peers must then trust the new key)",
    )
    show = sub.add_parser("show", help="print this device's public key and the trusted peers")
    trust = sub.add_parser("trust", help="allow a peer's public key (and record its address)")
    trust.add_argument("public_key", help="the peer's public key (40 z85 chars) or its .key file")
    trust.add_argument("--name", required=True, help="a name for the peer, e.g. pi-kitchen")
    trust.add_argument("--address", default=None,
                       help="the peer's agent address: host, host:port or tcp://host:port "
                            "(port 7700 if left out)")
    # `keys init --dir X` reads as naturally as `keys --dir X init`: accept both.
    for action in (init, show, trust):
        action.add_argument("--dir", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _read_key_argument(value: str) -> str:
    """A public key given inline, or the public key of a certificate file."""
    path = Path(value).expanduser()
    if len(value) != 40 and path.is_file():
        from transports.keys import read_public_certificate

        return read_public_certificate(path).decode()
    return value


def run(args: argparse.Namespace) -> int:
    from transports import keys

    directory: Path = args.dir.expanduser()
    if args.keys_command == "init":
        pair = keys.init_keys(directory, overwrite=args.overwrite)
        print(f"created key pair in {directory}")
        print(f"public key: {pair.public.decode()}")
        return 0
    if args.keys_command == "show":
        pair = keys.load_keypair(directory)
        fingerprint = keys.key_fingerprint(pair.public)
        print(f"public key: {pair.public.decode()}  (fingerprint {fingerprint})")
        print("on another device, trust this one with (set the address to this agent's):")
        print("  " + keys.trust_command(pair.public, keys.device_name(), "HOST:7700"))
        trusted = keys.trusted_keys(directory)
        print(f"trusted peers ({len(trusted)}):")
        for name, key in sorted(trusted.items()):
            where = f"  {key.address}" if key.address else ""
            print(f"  {name}  {key.public.decode()}{where}")
        return 0
    if args.keys_command == "trust":
        path = keys.trust(directory, _read_key_argument(args.public_key), args.name, args.address)
        print(f"trusted {args.name}: {path}")
        return 0
    raise AssertionError(f"unknown keys action {args.keys_command}")  # argparse forbids it
