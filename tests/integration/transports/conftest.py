"""Fixtures shared by the transports tests that run a real server process."""

from __future__ import annotations

from pathlib import Path

import pytest

from transports.keys import init_keys, trust


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """Two keys directories, server and client, trusting each other (a rogue holding the
    client key holds a trusted key, as any coordinator-introduced peer may)."""
    server_dir, client_dir = tmp_path / "server", tmp_path / "client"
    server_pair, client_pair = init_keys(server_dir), init_keys(client_dir)
    trust(server_dir, client_pair.public, "client")
    trust(client_dir, server_pair.public, "server")
    return server_dir, client_dir
