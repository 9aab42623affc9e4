"""Starting an agent: profile (cached), emulation caps, keys, then the daemon.

With `--preset NAME` the agent stands in for that device: it applies the preset's
caps to itself (threads, CPU affinity), reports the preset's figures as an
*emulated* profile so the planner sees a Pi-like device, enforces the preset's
memory as its budget unless `--memory-budget` says otherwise, and dilates each
stage's compute time to the preset's speed. Without either, an agent inside a memory
cgroup takes the cgroup's limit less what its interpreter holds (150 MiB) as its budget:
the limit counts the page cache too, so a share streamed through the window stays under
it instead of being OOM-killed (`devices.cgroup.default_memory_budget`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
from functools import partial
from pathlib import Path
from typing import Any

import edge_runtime
from edge_runtime.agent.config import AgentConfig
from edge_runtime.agent.daemon import Agent
from edge_runtime.backends import backend_kinds
from edge_runtime.errors import ConfigError
from transports.keys import DEFAULT_KEYS_DIR, FINGERPRINT_CHARS, key_fingerprint, load_keypair

log = logging.getLogger(__name__)


def build_identity(config: AgentConfig) -> tuple[AgentConfig, dict[str, Any]]:
    """Profile this device (or emulate a preset); returns the final config and hello payload."""
    from dataclasses import replace

    from devices import caps as dcaps
    from devices.cache import profile
    from devices.cgroup import default_memory_budget, read_limits

    host = profile(refresh=config.refresh_profile, cache_dir=config.profile_cache)
    caps = dcaps.caps_from_environment()
    if config.preset is not None:
        if caps is None or caps.preset != config.preset:
            caps = dcaps.caps_for_preset(config.preset, host)
        dcaps.apply_caps(caps)
        found = dcaps.emulated_profile(config.preset, host)
    else:
        found = host
    threads = config.threads or (caps.threads if caps is not None else None)
    budget = config.memory_budget
    if budget is None and caps is not None:
        budget = caps.memory_budget_bytes
    if budget is None:  # inside a memory cgroup: its limit (which counts the page cache)
        budget = default_memory_budget(read_limits())
        if budget is not None:
            log.info("memory budget %.0f MiB from this process's cgroup limit", budget / 2**20)
    name = config.name or default_agent_name(host.name, config)
    if config.preset and not config.name:
        name = f"{config.preset}@{name}"
    config = replace(config, threads=threads, memory_budget=budget, name=name)
    identity: dict[str, Any] = {
        "name": config.name,
        "version": edge_runtime.__version__,
        "pid": os.getpid(),
        "profile": found.to_dict(),
        "preset": config.preset,
        "emulated": config.preset is not None,
        "caps": None if caps is None else caps.to_dict(),
        "label": caps.label() if (caps is not None and config.preset) else found.name,
        "threads": threads,
        "memory_budget": budget,
        "backends": backend_kinds(),
    }
    if caps is not None and config.preset is not None:
        identity["_dilate"] = partial(dcaps.dilate, caps)
    return config, identity


def default_agent_name(host: str, config: AgentConfig) -> str:
    """`host` plus a short tag unique to this agent, e.g. ``myhost-3fa9c1``.

    Coordinators and the demo's device table key agents by name, so two hosts
    that share a host name (every fresh Raspberry Pi is ``raspberrypi``) must
    not share an agent name. The tag is the fingerprint of the agent's CURVE
    public key: stable across restarts and the same one `keys show` prints.
    Under --insecure there is no key; a random per-process tag keeps names
    unique, at the cost of changing on restart (pass --name for a fixed one).
    """
    if config.insecure:
        tag = os.urandom(FINGERPRINT_CHARS // 2).hex()
    else:
        pair = load_keypair(config.keys_dir or DEFAULT_KEYS_DIR)
        tag = key_fingerprint(pair.public)
    return f"{host}-{tag}"


def announce_target(address: str) -> tuple[int, list[str] | None]:
    """(port, IPv4 addresses to publish and announce on) for the bound control `address`.

    An agent bound to 0.0.0.0 announces every non-loopback address on every
    interface (None: the `Announcer`'s defaults); one bound to a single IPv4
    address announces only that address, on that interface, so an agent bound
    to 127.0.0.1 is visible to browsers on this host and nowhere else.
    """
    rest = address.removeprefix("tcp://")
    host, _, port_text = rest.rpartition(":")
    if not address.startswith("tcp://") or not port_text.isdigit():
        raise ConfigError(f"--announce needs a tcp:// listen address, got {address}")
    if host in ("0.0.0.0", "*"):
        return int(port_text), None
    try:
        socket.inet_aton(host)
    except OSError:
        raise ConfigError(
            f"--announce needs an IPv4 listen address or 0.0.0.0, got {host!r}; "
            "use --listen tcp://0.0.0.0:PORT"
        ) from None
    return int(port_text), [host]


def mdns_instance_name(agent_name: str) -> str:
    """The agent's name as a DNS-SD instance name: no dots, at most 63 bytes."""
    name = agent_name.replace(".", "-") or "edge-runtime-agent"
    while len(name.encode()) > 63:
        name = name[:-1]
    return name


def start_announcer(agent: Agent) -> Any:
    """Announce `agent` over mDNS; returns the `Announcer` (the caller closes it) or None.

    The TXT record carries the agent's CURVE public key, preset and version, so a
    coordinator can find it without a static address list. The key is a hint,
    not trust: mDNS is unauthenticated, and `connect` refuses an announced key
    that is not in its trusted-keys directory. A network where mDNS sockets cannot
    be opened (no multicast) is logged and the agent serves anyway: static
    addresses always work.
    """
    from edge_runtime.discovery import INSTALL_HINT, Announcer, zeroconf_available

    if not zeroconf_available():
        raise ConfigError(INSTALL_HINT)
    port, addresses = announce_target(agent.address)
    properties = {
        "name": agent.name,
        "public_key": agent.public_key or "",
        "preset": str(agent.identity.get("preset") or ""),
        "version": edge_runtime.__version__,
    }
    try:
        announcer = Announcer(port, mdns_instance_name(agent.name), addresses=addresses,
                              properties=properties, interfaces=addresses)
    except ConfigError as error:
        log.warning("not announced over mDNS (%s); coordinators must use this agent's "
                    "address %s", error, agent.address)
        return None
    return announcer


def run_agent(config: AgentConfig, ready_file: Path | None = None,
              announce: bool = False) -> int:
    """Start the agent and serve until SIGTERM/SIGINT or a `shutdown` request.

    With `announce`, the agent is announced over mDNS once it listens, and the
    announcement withdrawn (an mDNS goodbye) when it stops, SIGTERM included.
    """
    config, identity = build_identity(config)
    agent = Agent(config, identity)
    announcer: Any = None
    try:
        install_signal_handlers(agent)
        if announce:
            announcer = start_announcer(agent)
        if ready_file is not None:
            tmp = ready_file.with_name(ready_file.name + ".tmp")
            tmp.write_text(json.dumps({
                "address": agent.address, "public_key": agent.public_key, "name": agent.name,
                "pid": os.getpid(), "mdns_name": None if announcer is None else announcer.name}))
            os.replace(tmp, ready_file)
        print(f"agent {agent.name} listening on {agent.address}"
              + (f", announced as {announcer.name}" if announcer is not None else ""), flush=True)
        agent.serve_forever()
    finally:
        if announcer is not None:
            try:
                announcer.close()
            except Exception:  # the agent's own shutdown must go on
                log.exception("withdrawing the mDNS announcement failed")
        agent.close()
    return 0


def install_signal_handlers(agent: Agent) -> None:
    """SIGTERM and SIGINT stop the loop cleanly (deployments closed, sockets flushed)."""

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        agent.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
