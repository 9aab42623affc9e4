"""transports: everything that crosses a device boundary.

Wire format (`Frame`, `encode`, `decode`), CURVE keys and security, the one socket
layer (`sockets.py`: every socket's options, `open_server`/`open_client`), handshake
diagnosis, ZeroMQ channels, collectives, their cost model and a user-space link
emulator. It
imports nothing else of the project. `transports.cost` is pure arithmetic,
safe for the partitioner to import.
"""

from transports import cost
from transports.addresses import normalize_address
from transports.channels import Client, Incoming, Server
from transports.collectives import ALLREDUCE_ALGORITHMS, CollectiveGroup, GroupListener
from transports.compression import Compression, parse_compression
from transports.errors import (
    CollectiveError,
    DataAuthError,
    PeerTimeoutError,
    PeerUnreachableError,
    ProtocolError,
    RemoteError,
    SecurityError,
    TransportError,
)
from transports.handshake import HandshakeState, HandshakeStatus, HandshakeWatch
from transports.keys import (
    KeyPair,
    TrustedKey,
    generate_keypair,
    init_keys,
    load_keypair,
    server_key_for,
    trust,
    trusted_keys,
)
from transports.linkemu import LinkEmulator, LinkSpec
from transports.pieces import SPLIT_BYTES
from transports.sealing import Sealer, SealKeys
from transports.security import Authorizer, Security
from transports.sockets import open_client, open_server
from transports.wire import (
    ALLOWED_DTYPES,
    PROTOCOL_VERSION,
    Frame,
    decode,
    encode,
    error_frame,
    peek_request_id,
    raise_if_error,
)

__all__ = [
    "ALLOWED_DTYPES",
    "ALLREDUCE_ALGORITHMS",
    "PROTOCOL_VERSION",
    "SPLIT_BYTES",
    "Authorizer",
    "Client",
    "CollectiveError",
    "CollectiveGroup",
    "Compression",
    "DataAuthError",
    "Frame",
    "GroupListener",
    "HandshakeState",
    "HandshakeStatus",
    "HandshakeWatch",
    "Incoming",
    "KeyPair",
    "LinkEmulator",
    "LinkSpec",
    "PeerTimeoutError",
    "PeerUnreachableError",
    "ProtocolError",
    "RemoteError",
    "SealKeys",
    "Sealer",
    "Security",
    "SecurityError",
    "Server",
    "TransportError",
    "TrustedKey",
    "cost",
    "decode",
    "encode",
    "error_frame",
    "generate_keypair",
    "init_keys",
    "load_keypair",
    "normalize_address",
    "open_client",
    "open_server",
    "parse_compression",
    "peek_request_id",
    "raise_if_error",
    "server_key_for",
    "trust",
    "trusted_keys",
]
