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

`--security curve,sealed,insecure` runs each group size once per security mode, the
modes one after another per N (and `--rounds` times over, alternating), and prints
each mode's time as a ratio to the first mode's: ``curve`` (CURVE sockets), ``sealed``
(plain sockets, every message sealed with an AEAD under keys agreed from the CURVE
keys: what an LLM group uses), ``insecure``. A mode may name its links and a spin:
``sealed-tcp`` runs the group over plain TCP links (`transports.groupstream`, no
ZeroMQ I/O thread; loopback only), ``:spin50`` (e.g. ``sealed-tcp:spin50``) lets each
receive poll without sleeping for up to 50 µs first. `--sync q8` (or bf16, fp16) sends
the float32 payloads in that format (`transports.syncformat`). Each row also names the algorithm
`transports.cost.best_allreduce` predicts from the measured round trips (α = half the
round trip at that size, β from the largest size's, `MESSAGE_OVERHEAD_S` per message),
next to the one measured fastest.

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

COLLECTIVES = ("star", "ring", "a2a", "rd")
MODES = ("curve", "sealed", "insecure")
"""The security bases; a mode is BASE[-tcp][:spinN] (`allreduce_members.mode_parts`)."""
# the cost model's names of the bench's collectives
_MODEL_NAMES = {"star": "star", "ring": "ring", "a2a": "all_to_all",
                "rd": "recursive_doubling"}


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
    parser.add_argument("--insecure", action="store_true",
                        help="no CURVE (the same as --security insecure)")
    parser.add_argument("--security", default=None,
                        help="modes side by side, the first is the ratios' base: "
                        "curve, sealed, insecure (default: curve)")
    parser.add_argument("--sync", default="fp32",
                        help="format the payloads travel in: fp32, bf16, fp16 or q8")
    parser.add_argument("--rounds", type=int, default=1,
                        help="times each (N, mode) group runs, modes alternating")
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


def modes_of(args: argparse.Namespace) -> list[str]:
    """`--security` as a list of modes (`--insecure` alone: insecure; neither: curve)."""
    text = args.security or ("insecure" if args.insecure else "curve")
    from edge_runtime.bench.allreduce_members import mode_parts

    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = []
    for mode in modes:
        try:
            mode_parts(mode)
        except ValueError:
            unknown.append(mode)
    if unknown or not modes:
        raise SystemExit(f"--security: {unknown or text!r}; use {', '.join(MODES)}, "
                         "optionally -tcp (not curve) and :spinN, e.g. sealed-tcp:spin50")
    return list(dict.fromkeys(modes))


def _keys(n: int, secure: bool) -> list[list[str]]:
    if not secure:
        return [["", ""]] * n
    from transports.keys import generate_keypair

    pairs = [generate_keypair() for _ in range(n)]
    return [[p.public.decode(), p.secret.decode()] for p in pairs]


def run_group(n: int, sizes: list[int], collectives: list[str], repeats: int,
              mode: str, link: str, sync: str = "fp32") -> dict[str, Any]:
    """Run the collectives in N member processes; per (size, collective) call latencies."""
    keys = _keys(n, not mode.startswith("insecure"))
    base = {"n": n, "keys": keys, "sizes": sizes, "collectives": collectives,
            "repeats": repeats, "link": link, "mode": mode, "sync": sync}
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


def _predicted(n: int, size: int, rtt: dict[str, Any], sizes: list[int]) -> str:
    """The cost model's pick for N members from the measured two-member round trips."""
    from transports.cost import MESSAGE_OVERHEAD_S, best_allreduce, uniform

    alpha = _percentiles(rtt[str(size)])[0] / 2e6
    big = max(sizes)
    beta = big / max(1e-9, _percentiles(rtt[str(big)])[0] / 2e6 - alpha) if big > size else 1e9
    latency, bandwidth = uniform(n, alpha, max(beta, 1e6))
    return best_allreduce(size, latency, bandwidth, MESSAGE_OVERHEAD_S)[0]


def _merge(into: dict[str, Any], result: dict[str, Any]) -> None:
    """Add one round's per-member call times to the earlier rounds'."""
    for key, members in result.items():
        if key not in into:
            into[key] = members
        else:
            for mine, more in zip(into[key], members, strict=True):
                mine.extend(more)


def run(args: argparse.Namespace) -> dict[str, Any]:
    members = [int(m) for m in args.members.split(",")]
    sizes = _sizes(args.sizes)
    collectives = [c.strip() for c in args.collectives.split(",")]
    links = [link.strip() for link in args.links.split(",")]
    modes = modes_of(args)
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
    print(f"security: {', '.join(modes)} (ratios to {modes[0]}); latency per call in µs, "
          "slowest member's median and p99; rtt: bare pyzmq (plain for sealed and insecure)")
    header = (f"{'link':9} {'N':>2} {'bytes':>8} {'mode':18} {'what':6} {'median':>9} "
              f"{'p99':>9} {'×rtt':>6} {'×gloo':>6} {'×' + modes[0]:>9}")
    for link in links:
        rtts = {mode: run_rtt(sizes, args.repeats, mode.startswith("curve"), link)
                for mode in modes}
        link_modes = [m for m in modes if link == "loopback" or "-tcp" not in m]
        gloo_by_n = {n: run_gloo(n, sizes, args.repeats) for n in members} if (
            gloo_ok and link == "loopback") else {}
        print(f"\n{header}")
        for mode in modes:
            for size in sizes:
                rtt_median, rtt_p99 = _percentiles(rtts[mode][str(size)])
                rows.append({"link": link, "n": 2, "bytes": size, "what": "rtt", "mode": mode,
                             "median_us": rtt_median, "p99_us": rtt_p99})
                print(f"{link:9} {2:>2} {size:>8} {mode:18} {'rtt':6} {rtt_median:9.1f} "
                      f"{rtt_p99:9.1f}")
        for n in members:
            results: dict[str, dict[str, Any]] = {mode: {} for mode in link_modes}
            for _ in range(max(1, args.rounds)):
                for mode in link_modes:  # interleaved: a busy machine slows every mode alike
                    _merge(results[mode], run_group(n, sizes, collectives, args.repeats,
                                                    mode, link, args.sync))
            for size in sizes:
                gloo_median = None
                if n in gloo_by_n:
                    gloo_median, gloo_p99 = _percentiles(gloo_by_n[n][str(size)])
                    rows.append({"link": link, "n": n, "bytes": size, "what": "gloo",
                                 "median_us": gloo_median, "p99_us": gloo_p99})
                    print(f"{link:9} {n:>2} {size:>8} {'':18} {'gloo':6} {gloo_median:9.1f} "
                          f"{gloo_p99:9.1f}")
                base: dict[str, float] = {}
                for mode in link_modes:
                    rtt_median = _percentiles(rtts[mode][str(size)])[0]
                    medians: dict[str, float] = {}
                    for name in collectives:
                        median, p99 = _percentiles(results[mode][f"{name}/{size}"])
                        medians[name] = median
                        base.setdefault(name, median)
                        x_gloo = f"{median / gloo_median:6.2f}" if gloo_median else f"{'-':>6}"
                        rows.append({"link": link, "n": n, "bytes": size, "what": name,
                                     "mode": mode, "median_us": median, "p99_us": p99,
                                     "x_rtt": median / rtt_median,
                                     "x_gloo": median / gloo_median if gloo_median else None,
                                     "x_first_mode": median / base[name]})
                        print(f"{link:9} {n:>2} {size:>8} {mode:18} {name:6} {median:9.1f} "
                              f"{p99:9.1f} {median / rtt_median:6.2f} {x_gloo} "
                              f"{median / base[name]:9.2f}")
                    fastest = min(medians, key=lambda k: medians[k])
                    predicted = _predicted(n, size, rtts[mode], sizes)
                    rows.append({"link": link, "n": n, "bytes": size, "mode": mode,
                                 "what": "choice", "measured_best": _MODEL_NAMES[fastest],
                                 "predicted_best": predicted})
                    print(f"{link:9} {n:>2} {size:>8} {mode:18} model picks {predicted}, "
                          f"measured fastest {_MODEL_NAMES[fastest]}")
    return {"security": modes, "rows": rows, "command": " ".join(sys.argv)}
