"""Starting an agent: profile (cached), emulation caps, keys, then the daemon.

With `--preset NAME` the agent stands in for that device: it applies the preset's
caps to itself (threads, CPU affinity), reports the preset's figures as an
*emulated* profile so the planner sees a Pi-like device, enforces the preset's
memory as its budget unless `--memory-budget` says otherwise, and dilates each
stage's compute time to the preset's speed.
"""

from __future__ import annotations

import json
import logging
import os
from functools import partial
from pathlib import Path
from typing import Any

import edge_runtime
from edge_runtime.agent.backends import backend_kinds
from edge_runtime.agent.config import AgentConfig
from edge_runtime.agent.daemon import Agent, install_signal_handlers

log = logging.getLogger(__name__)


def build_identity(config: AgentConfig) -> tuple[AgentConfig, dict[str, Any]]:
    """Profile this device (or emulate a preset); returns the final config and hello payload."""
    from dataclasses import replace

    from devices import caps as dcaps
    from devices.cache import profile

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
    config = replace(config, threads=threads, memory_budget=budget,
                     name=config.name or (f"{config.preset}@{host.name}" if config.preset
                                          else host.name))
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


def run_agent(config: AgentConfig, ready_file: Path | None = None) -> int:
    """Start the agent and serve until SIGTERM/SIGINT or a `shutdown` request."""
    config, identity = build_identity(config)
    agent = Agent(config, identity)
    try:
        install_signal_handlers(agent)
        if ready_file is not None:
            tmp = ready_file.with_name(ready_file.name + ".tmp")
            tmp.write_text(json.dumps({"address": agent.address, "public_key": agent.public_key,
                                       "name": agent.name, "pid": os.getpid()}))
            os.replace(tmp, ready_file)
        print(f"agent {agent.name} listening on {agent.address}", flush=True)
        agent.serve_forever()
    finally:
        agent.close()
    return 0
