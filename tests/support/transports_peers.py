"""Real peer processes for transports tests: a Server in its own process.

Run as a script: ``python tests/support/transports_peers.py KEYS_DIR|--insecure``.
It prints ``ADDRESS <addr> KEY <public z85>`` on its first stdout line and serves:
``echo`` (returns the frame), ``count`` (how many non-heartbeat frames it acted on),
``allow`` (admit meta["key"] at run time), ``push`` (sends meta["n"] unsolicited frames
to the caller), ``exit``. Malformed messages get an error frame; it keeps serving.
It exits on ``exit`` or after `LIFETIME_S`, so a failed test never leaves it behind.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LIFETIME_S = 60.0
SCRIPT = Path(__file__).resolve()


def serve(keys_dir: str) -> None:
    from transports.channels import Server
    from transports.security import Security
    from transports.wire import Frame

    security = Security.insecure_mode() if keys_dir == "--insecure" else Security.from_dir(keys_dir)
    server = Server("tcp://127.0.0.1:0", security, name="peer", max_message_bytes=1 << 20)
    key = security.keypair.public.decode() if security.keypair else "-"
    print(f"ADDRESS {server.address} KEY {key}", flush=True)
    acted = 0
    end = time.monotonic() + LIFETIME_S
    while time.monotonic() < end:
        incoming = server.recv(0.2)
        if incoming is None:
            continue
        if incoming.frame is None:
            server.reply_error(incoming, incoming.error or ValueError("?"))
            continue
        frame = incoming.frame
        acted += 1
        if frame.kind == "echo":
            server.reply(incoming, Frame("echo", meta=frame.meta, tensors=dict(frame.tensors)))
        elif frame.kind == "count":
            server.reply(incoming, Frame("count", meta={"acted": acted}))
        elif frame.kind == "allow":
            server.allow(frame.meta["key"])
            server.reply(incoming, Frame("ok"))
        elif frame.kind == "push":
            for i in range(int(frame.meta["n"])):
                server.send(incoming.peer, Frame("result", request_id=1000 + i, meta={"i": i}))
        elif frame.kind == "exit":
            server.reply(incoming, Frame("bye"))
            break
        else:
            server.reply_error(incoming, ValueError(f"unknown kind {frame.kind!r}"))
    server.close()


@contextmanager
def peer_process(keys_dir: str | Path) -> Iterator[tuple[str, bytes, subprocess.Popen[str]]]:
    """Start a peer server process; yields (address, public key, process)."""
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(keys_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().split()
        if len(line) != 4:
            raise RuntimeError(f"peer process did not start: {line}")
        yield line[1], line[3].encode(), process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


if __name__ == "__main__":
    serve(sys.argv[1])
