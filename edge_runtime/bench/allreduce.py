"""`edge-runtime bench allreduce`: collectives vs the bare ZeroMQ round trip and gloo.

For each group size N and payload size, N member processes on this machine run
each collective back to back; a call's latency is the slowest member's time for
that call. Side by side, in the same run:
- ``rtt``: a bare pyzmq DEALER→ROUTER→DEALER round trip of the same payload between
  two processes, at the same security setting (the floor: a star allreduce needs
  one such round trip plus the hub's work). With emulated Wi-Fi, the round trip
  goes through `transports.channels` with the same emulator on both ends.
- ``gloo``: `torch.distributed` all_reduce (gloo backend) for the same N and size,
  the peer a user would otherwise pick (loopback only: gloo cannot be emulated).

This module drives the run and renders the table; the member processes it spawns run
`edge_runtime.bench.allreduce_members`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from typing import Any

WORKER_TIMEOUT_S = 600.0
"""Longest a group of member processes may take for all its sizes before it is killed."""

COLLECTIVES = ("star", "ring", "a2a")


def _sizes(text: str) -> list[int]:
    units = {"K": 1024, "M": 1024 * 1024}
    out = []
    for item in text.split(","):
        item = item.strip().upper().removesuffix("B")
        out.append(int(float(item[:-1]) * units[item[-1]]) if item[-1] in units else int(item))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--members", default="2,4,8", help="group sizes N (default 2,4,8)")
    parser.add_argument("--sizes", default="4K,32K,256K,4M", help="payload sizes in bytes")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per size ≤ 32K")
    parser.add_argument("--collectives", default=",".join(COLLECTIVES), help="star,ring,a2a")
    parser.add_argument("--links", default="loopback,wifi", help="loopback and/or wifi")
    parser.add_argument("--insecure", action="store_true", help="no CURVE (default: CURVE on)")
    parser.add_argument("--no-gloo", action="store_true", help="skip torch.distributed gloo")
    parser.add_argument(
        "--pin", action="store_true", help="pin process i to CPU i (needs ≥ N free cores)"
    )


def _percentiles(values: list[float] | list[list[float]]) -> tuple[float, float]:
    """(median, p99) in µs; for per-member lists, those of the slowest member
    (the largest median and the largest p99 over members, as nccl-tests reports)."""
    import numpy as np

    if values and isinstance(values[0], list):
        stats = [_percentiles(member) for member in values]
        return max(s[0] for s in stats), max(s[1] for s in stats)
    array = np.asarray(values) * 1e6
    return float(np.median(array)), float(np.percentile(array, 99))


_PIN = False


def _spawn(mode: str, configs: list[dict[str, Any]]) -> list[subprocess.Popen[str]]:
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    processes = []
    cpus = sorted(os.sched_getaffinity(0))
    for index, config in enumerate(configs):
        if _PIN:
            config = dict(config, cpus=[cpus[index % len(cpus)]])
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_runtime.bench.allreduce_members", mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert process.stdin is not None
        process.stdin.write(json.dumps(config) + "\n")
        process.stdin.flush()
        processes.append(process)
    return processes


def _read(process: subprocess.Popen[str]) -> dict[str, Any]:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"benchmark worker exited early (code {process.wait()})")
    result: dict[str, Any] = json.loads(line)
    return result


def _finish(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        try:
            process.wait(timeout=WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _keys(n: int, secure: bool) -> list[list[str]]:
    if not secure:
        return [["", ""]] * n
    from transports.keys import generate_keypair

    pairs = [generate_keypair() for _ in range(n)]
    return [[p.public.decode(), p.secret.decode()] for p in pairs]


def run_group(n: int, sizes: list[int], collectives: list[str], repeats: int,
              secure: bool, link: str) -> dict[str, Any]:
    """Run the collectives in N member processes; per (size, collective) call latencies."""
    keys = _keys(n, secure)
    base = {"n": n, "keys": keys, "sizes": sizes, "collectives": collectives,
            "repeats": repeats, "link": link}
    processes = _spawn("member", [dict(base, rank=r) for r in range(n)])
    try:
        endpoints = [_read(p)["address"] for p in processes]
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(json.dumps({"endpoints": endpoints}) + "\n")
            process.stdin.flush()
        return _read(processes[0])
    finally:
        _finish(processes)


def run_rtt(sizes: list[int], repeats: int, secure: bool, link: str) -> dict[str, Any]:
    keys = _keys(2, secure)
    base = {"keys": keys, "sizes": sizes, "repeats": repeats, "link": link}
    processes = _spawn("rtt", [dict(base, rank=r) for r in range(2)])
    try:
        address = _read(processes[1])["address"]
        assert processes[0].stdin is not None
        processes[0].stdin.write(json.dumps({"address": address}) + "\n")
        processes[0].stdin.flush()
        return _read(processes[0])
    finally:
        _finish(processes)


def run_gloo(n: int, sizes: list[int], repeats: int) -> dict[str, Any]:
    port = _free_port()
    base = {"n": n, "sizes": sizes, "repeats": repeats, "port": port}
    processes = _spawn("gloo", [dict(base, rank=r) for r in range(n)])
    try:
        return _read(processes[0])
    finally:
        _finish(processes)


def run(args: argparse.Namespace) -> dict[str, Any]:
    members = [int(m) for m in args.members.split(",")]
    sizes = _sizes(args.sizes)
    collectives = [c.strip() for c in args.collectives.split(",")]
    links = [link.strip() for link in args.links.split(",")]
    secure = not args.insecure
    global _PIN
    _PIN = bool(args.pin)
    gloo_ok = not args.no_gloo
    if gloo_ok:
        try:
            import torch.distributed  # noqa: F401
        except ImportError:
            print("torch is not installed: gloo column skipped")
            gloo_ok = False
    rows: list[dict[str, Any]] = []
    print(f"security: {'CURVE' if secure else 'insecure'}; latency per call in µs, "
          "slowest member's median and p99")
    header = (f"{'link':9} {'N':>2} {'bytes':>8} {'what':6} {'median':>9} {'p99':>9} "
              f"{'×rtt':>6} {'×gloo':>6}")
    for link in links:
        rtt = run_rtt(sizes, args.repeats, secure, link)
        gloo_by_n = {n: run_gloo(n, sizes, args.repeats) for n in members} if (
            gloo_ok and link == "loopback") else {}
        print(f"\n{header}")
        for size in sizes:
            rtt_median, rtt_p99 = _percentiles(rtt[str(size)])
            rows.append({"link": link, "n": 2, "bytes": size, "what": "rtt",
                         "median_us": rtt_median, "p99_us": rtt_p99})
            print(f"{link:9} {2:>2} {size:>8} {'rtt':6} {rtt_median:9.1f} {rtt_p99:9.1f}")
        for n in members:
            result = run_group(n, sizes, collectives, args.repeats, secure, link)
            for size in sizes:
                rtt_median = _percentiles(rtt[str(size)])[0]
                gloo_median = None
                if n in gloo_by_n:
                    gloo_median, gloo_p99 = _percentiles(gloo_by_n[n][str(size)])
                    rows.append({"link": link, "n": n, "bytes": size, "what": "gloo",
                                 "median_us": gloo_median, "p99_us": gloo_p99})
                    print(f"{link:9} {n:>2} {size:>8} {'gloo':6} {gloo_median:9.1f} {gloo_p99:9.1f}"
                          f" {gloo_median / rtt_median:6.2f}")
                for name in collectives:
                    median, p99 = _percentiles(result[f"{name}/{size}"])
                    x_gloo = f"{median / gloo_median:6.2f}" if gloo_median else f"{'-':>6}"
                    rows.append({"link": link, "n": n, "bytes": size, "what": name,
                                 "median_us": median, "p99_us": p99,
                                 "x_rtt": median / rtt_median,
                                 "x_gloo": median / gloo_median if gloo_median else None})
                    print(f"{link:9} {n:>2} {size:>8} {name:6} {median:9.1f} {p99:9.1f}"
                          f" {median / rtt_median:6.2f} {x_gloo}")
    return {"security": "curve" if secure else "insecure", "rows": rows,
            "command": " ".join(sys.argv)}
