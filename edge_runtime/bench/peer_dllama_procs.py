"""The processes of one distributed-llama run: its workers, its root, its converter.

Why apart from the suite: process handling is where a benchmark leaks (a worker left
listening holds a core and a port through every later round), so it lives in one
place that starts each process, waits for it by what it does (a worker is ready when
its port listens: read from /proc/net/tcp, since a probing connection would be taken
for a root), and stops each one by its own pid, whatever happened in between.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_runtime.bench.peer_dllama_output import (
    DllamaRun,
    PeerRunError,
    is_pred_line,
    parse_inference_output,
)

_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now (the OS picks them)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def listening_ports() -> set[int]:
    """Ports with a TCP socket in LISTEN state on this machine (IPv4)."""
    out: set[int] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == _LISTEN:
            out.add(int(fields[1].rsplit(":", 1)[1], 16))
    return out


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return "(no output)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"


def _start(command: list[str], stdout: Any, cwd: Path | None = None
           ) -> subprocess.Popen[bytes]:
    """Popen with stderr joined to stdout; a program that cannot be started (no taskset,
    no python at --peer-python) is a PeerRunError naming it."""
    try:
        return subprocess.Popen(command, stdout=stdout, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd)
    except OSError as error:
        raise PeerRunError(f"cannot start {command[0]}: {error}") from error


def stop(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """Stop one process we started, by its pid: SIGTERM, then SIGKILL after `grace_s`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def workers(commands: list[list[str]], ports: list[int], log_dir: Path,
            timeout_s: float = 30.0) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start one `dllama worker` per command (its output to log_dir/worker-i.log), wait
    until each one's port listens, yield them, and stop every one by pid on the way out."""
    if commands:
        log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    logs = [log_dir / f"worker-{i + 1}.log" for i in range(len(commands))]
    try:
        for command, log in zip(commands, logs, strict=True):
            with log.open("wb") as sink:
                procs.append(_start(command, stdout=sink))
        deadline = time.monotonic() + timeout_s
        while not set(ports) <= listening_ports():
            for proc, log in zip(procs, logs, strict=True):
                if proc.poll() is not None:
                    raise PeerRunError(f"dllama worker {proc.args!r} exited with {proc.returncode} "
                                       f"before listening:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise PeerRunError(f"dllama workers did not listen on {ports} within "
                                   f"{timeout_s:.0f} s; see {log_dir}")
            time.sleep(0.02)
        yield procs
    finally:
        for proc in procs:
            stop(proc)


def run_root(command: list[str], log: Path, timeout_s: float) -> DllamaRun:
    """Run `dllama inference` to its end, timing each token line as it arrives; its
    whole output goes to `log`. Killed (PeerRunError) past `timeout_s`."""
    proc = _start(command, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    chunks: list[bytes] = []
    arrivals: list[float] = []
    try:
        for line in iter(proc.stdout.readline, b""):
            if is_pred_line(line):
                arrivals.append(time.perf_counter())
            chunks.append(line)
        rc = proc.wait()
    finally:
        timer.cancel()
        stop(proc)
        proc.stdout.close()
    raw = b"".join(chunks)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(raw)
    text = raw.decode("utf-8", "replace")
    if rc != 0:
        tail = "\n".join(text.strip().splitlines()[-6:])
        why = f"killed after {timeout_s:.0f} s" if rc < 0 else f"exited with {rc}"
        raise PeerRunError(f"dllama inference {why} (output in {log}):\n{tail}")
    return parse_inference_output(text, tuple(arrivals))


def convert(commands: dict[Path, list[str]], work: Path, timeout_s: float) -> None:
    """Run the converter commands at once (one process each), each in a directory of its
    own under `work`, and move what each wrote to its target path only once it succeeded,
    so an interrupted conversion never passes for a cached model."""
    started: list[tuple[Path, Path, list[str], subprocess.Popen[bytes]]] = []
    try:
        for target, command in commands.items():
            scratch = work / f"converting-{target.name}"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            with (scratch / "convert.log").open("wb") as sink:
                started.append((target, scratch, command,
                                _start(command, stdout=sink, cwd=scratch)))
        deadline = time.monotonic() + timeout_s
        for target, scratch, command, proc in started:
            try:
                rc = proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise PeerRunError(f"converting {target.name} took over {timeout_s:.0f} s; "
                                   f"see {scratch / 'convert.log'}") from None
            written = scratch / target.name
            if rc != 0 or not written.is_file():
                raise PeerRunError(f"{' '.join(command)} failed ({rc}):\n"
                                   f"{_tail(scratch / 'convert.log')}")
            os.replace(written, target)
            shutil.rmtree(scratch, ignore_errors=True)
    finally:
        for *_, proc in started:
            stop(proc)


__all__ = ["convert", "free_ports", "listening_ports", "run_root", "stop", "workers"]
