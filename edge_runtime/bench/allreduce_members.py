"""The member processes of `edge-runtime bench allreduce`: the code each spawned process runs.

Kept apart from `edge_runtime.bench.allreduce` (which spawns them, gathers their timings
and renders the table) because these run in a fresh interpreter per member: a collective
member, one end of the bare round trip, or a gloo rank. Each one is started as
``python -m edge_runtime.bench.allreduce_members MODE``, reads a JSON config line on
stdin and prints JSON lines on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any


def _repeats(base: int, size: int) -> int:
    if size <= 32 * 1024:
        return base
    if size <= 256 * 1024:
        return max(10, base // 2)
    return max(10, base // 10)


def _warmup(repeats: int) -> int:
    """Untimed calls before timing: connections, caches and allocators settle."""
    return min(10, max(2, repeats // 5))


def mode_parts(mode: str) -> tuple[str, bool, int]:
    """A bench mode ``BASE[-tcp][:spinN]`` as (base, plain TCP links, spin µs): base is
    curve, sealed or insecure; ``-tcp`` runs the group over `transports.groupstream`
    (sealed or insecure only); ``:spinN`` polls without sleeping for up to N µs before
    each blocking receive. ValueError for anything else."""
    name, _, spin = mode.partition(":")
    base, tcp = name.removesuffix("-tcp"), name.endswith("-tcp")
    if base not in ("curve", "sealed", "insecure") or (tcp and base == "curve"):
        raise ValueError(f"unknown mode {mode!r}")
    if spin and not (spin.startswith("spin") and spin[4:].isdigit()):
        raise ValueError(f"unknown mode {mode!r}; spin is written :spin50")
    return base, tcp, int(spin[4:]) if spin else 0


def _security(pair: list[str]) -> Any:
    from transports.keys import KeyPair
    from transports.security import Security

    if not pair[0]:
        return Security(insecure=True)
    return Security(keypair=KeyPair(pair[0].encode(), pair[1].encode()))


def _emulation(link: str, seed: int) -> Any:
    from transports.linkemu import LinkEmulator, LinkSpec

    return LinkEmulator(default=LinkSpec.wifi(), seed=seed) if link == "wifi" else None


def _member(config: dict[str, Any]) -> None:
    import numpy as np

    from transports.collectives import CollectiveGroup, GroupListener
    from transports.groupstream import StreamListener
    from transports.sealing import SealKeys
    from transports.security import Security

    rank = config["rank"]
    base, tcp, spin_us = mode_parts(config.get("mode", "curve"))
    security = _security(config["keys"][rank])
    keys = None if security.insecure else [k[0].encode() for k in config["keys"]]
    seal = None
    if base == "sealed":  # plain sockets, every message sealed (AEAD)
        assert keys is not None and security.keypair is not None
        seal = SealKeys.from_curve(rank, security.keypair.secret, keys, b"bench")
        security, keys = Security(insecure=True), None
    listener: GroupListener | StreamListener = (
        StreamListener("tcp://127.0.0.1:0", max_message_bytes=64 << 20) if tcp
        else GroupListener("tcp://127.0.0.1:0", security, peer_keys=keys or ()))
    print(json.dumps({"address": listener.address}), flush=True)
    endpoints = json.loads(sys.stdin.readline())["endpoints"]
    group = CollectiveGroup(rank, endpoints, security, listener=listener, peer_keys=keys,
                            timeout_s=120.0, emulation=_emulation(config["link"], rank),
                            seal_keys=seal, spin_us=spin_us, sync=config.get("sync", "fp32"))
    calls: dict[str, Callable[[np.ndarray], np.ndarray]] = {  # through `allreduce`: sync
        "star": lambda x: group.allreduce(x, "star", 0),
        "ring": lambda x: group.allreduce(x, "ring"),
        "a2a": lambda x: group.allreduce(x, "all_to_all"),
        "rd": lambda x: group.allreduce(x, "recursive_doubling"),
    }
    results: dict[str, list[list[float]]] = {}
    for size in config["sizes"]:
        x = np.random.default_rng(rank).standard_normal(size // 4).astype(np.float32)
        repeats = _repeats(config["repeats"], size)
        for name in config["collectives"]:
            call = calls[name]
            group.barrier()
            for _ in range(_warmup(repeats)):
                call(x)
            group.barrier()
            times = np.empty(repeats, dtype=np.float32)
            for i in range(repeats):
                start = time.perf_counter()
                call(x)
                times[i] = time.perf_counter() - start
            gathered = group.gather(times, root=0)
            if gathered is not None:
                results[f"{name}/{size}"] = [member.tolist() for member in gathered]
    group.barrier()
    if rank == 0:
        print(json.dumps(results), flush=True)
    group.close()


def _rtt(config: dict[str, Any]) -> None:
    """Rank 1 echoes, rank 0 times round trips (bare pyzmq, or channels when emulated)."""
    import numpy as np
    import zmq

    from transports.channels import Client, Server
    from transports.security import Authorizer
    from transports.wire import Frame

    rank, link = config["rank"], config["link"]
    security = _security(config["keys"][rank])
    server_key = config["keys"][1][0].encode() if not security.insecure else None
    if rank == 1:
        if link == "wifi":
            server = Server("tcp://127.0.0.1:0", security, emulation=_emulation(link, 1))
            if not security.insecure:
                server.allow(config["keys"][0][0])
            print(json.dumps({"address": server.address}), flush=True)
            while True:
                incoming = server.recv(120.0)
                if incoming is None or (incoming.frame and incoming.frame.kind == "stop"):
                    break
                if incoming.frame is not None:
                    server.reply(incoming, Frame("echo", tensors=dict(incoming.frame.tensors)))
            server.flush(1.0)
            server.close()
            return
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        authorizer = None if security.insecure else Authorizer.acquire(context, security)
        if authorizer is not None:
            authorizer.allow(config["keys"][0][0])
        router = context.socket(zmq.ROUTER)
        security.apply_server(router)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        print(json.dumps({"address": f"tcp://127.0.0.1:{port}"}), flush=True)
        while True:
            parts = router.recv_multipart(copy=False)
            if len(parts) == 2 and parts[1].bytes == b"stop":
                break
            router.send_multipart(parts, copy=False)
        router.close(linger=0)
        if authorizer is not None:
            authorizer.release()
        context.term()
        return
    address = json.loads(sys.stdin.readline())["address"]
    results: dict[str, list[float]] = {}
    if link == "wifi":
        client = Client(address, security, server_public_key=server_key,
                        emulation=_emulation(link, 0))
        for size in config["sizes"]:
            frame = Frame("echo", tensors={"x": np.zeros(size, np.uint8)})
            repeats = _repeats(config["repeats"], size)
            for _ in range(_warmup(repeats)):
                client.request(frame, 120.0)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                client.request(frame, 120.0)
                times.append(time.perf_counter() - start)
            results[str(size)] = times
        client.send(Frame("stop"))
        client.flush(1.0)
        client.close()
    else:
        context = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        security.apply_client(dealer, server_key)
        dealer.connect(address)
        for size in config["sizes"]:
            payload = np.zeros(size, np.uint8).data
            repeats = _repeats(config["repeats"], size)
            times = []
            for i in range(repeats + _warmup(repeats)):
                start = time.perf_counter()
                dealer.send(payload, copy=False)
                dealer.recv(copy=False)
                if i >= _warmup(repeats):
                    times.append(time.perf_counter() - start)
            results[str(size)] = times
        dealer.send(b"stop")
        dealer.close(linger=1000)
        context.term()
    print(json.dumps(results), flush=True)


def _gloo(config: dict[str, Any]) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank, n = config["rank"], config["n"]
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{config['port']}", rank=rank, world_size=n
    )
    results: dict[str, list[list[float]]] = {}
    for size in config["sizes"]:
        tensor = torch.ones(size // 4)
        repeats = _repeats(config["repeats"], size)
        for _ in range(_warmup(repeats)):
            dist.all_reduce(tensor)
        times = torch.empty(repeats, dtype=torch.float64)
        dist.barrier()
        for i in range(repeats):
            tensor.fill_(1.0)
            start = time.perf_counter()
            dist.all_reduce(tensor)
            times[i] = time.perf_counter() - start
        gathered = [torch.empty_like(times) for _ in range(n)]
        dist.all_gather(gathered, times)
        results[str(size)] = [member.tolist() for member in gathered]
    dist.destroy_process_group()
    if rank == 0:
        print(json.dumps(results), flush=True)


if __name__ == "__main__":
    _config = json.loads(sys.stdin.readline())
    if _config.get("cpus"):
        os.sched_setaffinity(0, _config["cpus"])
    {"member": _member, "rtt": _rtt, "gloo": _gloo}[sys.argv[1]](_config)
