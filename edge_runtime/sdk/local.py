"""`local_cluster`: real agent processes on 127.0.0.1, for the demo, examples and tests.

Each agent is `edge-runtime agent` in its own subprocess, listening on a free
port it picks itself (port 0) and announcing address and public key through a
ready file, so there is no race for ports. Keys are generated for the session:
the coordinator's key is trusted by every agent, each agent's key is passed to
the coordinator; nothing is written to the user's keys directory. With presets,
each agent runs under the preset's caps (threads, CPU pinning, memory budget,
compute dilation) and reports an emulated profile.

Teardown on exit, even after errors: agents get SIGTERM (clean shutdown), then
SIGKILL after `STOP_GRACE_S`; the session directory (keys, shard caches unless
a cache dir was given) is removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from edge_runtime.errors import AgentUnavailableError, ConfigError
from edge_runtime.sdk.agent_link import AgentLink
from edge_runtime.sdk.cluster import Cluster, assemble
from edge_runtime.sdk.config import DEFAULT_TIMEOUTS, Timeouts
from edge_runtime.sdk.fallback.policy import ChainItem, FallbackPolicy, as_policy
from edge_runtime.sdk.hub import Hub
from edge_runtime.sdk.journal import Journal
from edge_runtime.sdk.resume import open_journal
from transports.keys import init_keys, trust
from transports.linkemu import LinkEmulator
from transports.security import Security

log = logging.getLogger(__name__)

# After SIGTERM an agent has this long to close its deployments before SIGKILL.
STOP_GRACE_S = 5.0
# How often the ready file is looked for while an agent starts.
READY_POLL_S = 0.05


@dataclass
class AgentProcess:
    """One agent subprocess started by `local_cluster`."""

    index: int
    name: str
    preset: str | None
    cache_dir: Path
    keys_dir: Path | None
    ready_file: Path
    log_file: Path
    args: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    address: str = ""
    public_key: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        with self.log_file.open("ab") as log_handle:
            self.process = subprocess.Popen(
                self.args, env=self.env, stdout=log_handle, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready_file.exists():
            if self.process is not None and self.process.poll() is not None:
                raise AgentUnavailableError(
                    f"agent process exited with code {self.process.returncode} during start; "
                    f"its log:\n{self.tail()}", agent=self.name)
            if time.monotonic() > deadline:
                raise AgentUnavailableError(
                    f"agent did not start within {timeout_s:g} s; its log:\n{self.tail()}",
                    agent=self.name)
            time.sleep(READY_POLL_S)
        info = json.loads(self.ready_file.read_text())
        self.address = str(info["address"])
        self.public_key = info.get("public_key")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            log.warning("agent %s ignored SIGTERM for %.0f s; killing it", self.name, grace_s)
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL (for fault tests): no cleanup on the agent's side."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class LocalCluster(Cluster):
    """A `Cluster` whose agents are subprocesses of this one (`processes`)."""

    processes: list[AgentProcess]
    session_dir: Path

    def restart(self, index: int, timeout_s: float | None = None) -> None:
        """Stop agent `index` and start it again (same cache, keys, name and port), then
        say hello and re-introduce it (as `rejoin` does for an agent that came back).
        Its deployments are gone: a deployment with failover places itself again."""
        proc = self.processes[index]
        proc.stop()
        proc.args = [a if not a.startswith("tcp://127.0.0.1:") else
                     f"tcp://127.0.0.1:{proc.address.rsplit(':', 1)[1]}" for a in proc.args]
        proc.start()
        proc.wait_ready(timeout_s or self.timeouts.agent_start_s)
        link = self.link(proc.name)
        link.dead = False
        link.heard(time.monotonic())  # the restarted agent owes no earlier heartbeat
        deadline = time.monotonic() + self.timeouts.hello_s
        while not link.socket.poll(50, zmq.POLLOUT) and time.monotonic() < deadline:
            pass  # the socket reconnects after its backoff (up to 2 s after a long outage)
        if proc.name not in self.rejoin([proc.name]):
            raise AgentUnavailableError("restarted, but does not answer a hello",
                                        agent=proc.name)


def _agent_command(proc_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "edge_runtime.cli.main", *proc_args]


@contextlib.contextmanager
def local_cluster(
    n: int | None = None,
    presets: Sequence[str | None] | None = None,
    *,
    insecure: bool = False,
    memory_budgets: Sequence[str | int | None] | None = None,
    cache_dirs: Sequence[str | os.PathLike[str]] | None = None,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    log_level: str = "INFO",
    names: Sequence[str] | None = None,
    allow_checkpoint_dirs: Sequence[str | os.PathLike[str]] = (),
    journal: str | os.PathLike[str] | Journal | None = None,
    fallback: Sequence[ChainItem] | FallbackPolicy | None = None,
    ports: Sequence[int] | None = None,
    link_emulation: LinkEmulator | None = None,
) -> Iterator[LocalCluster]:
    """Start `n` agents on 127.0.0.1 (one per preset if `presets` is given) and yield
    the cluster; stop them all on exit, also after an error.

    `presets`: device presets to emulate (None entries run at this machine's speed).
    `memory_budgets`: per agent ("512MB", bytes, or None for the preset's).
    `cache_dirs`: per agent shard cache directories (default: inside the session
    directory, removed on exit); pass them to keep shards across clusters.
    `allow_checkpoint_dirs`: directories every agent may read LLM checkpoints from in
    place (`edge-runtime agent --allow-checkpoint-dir`). By default none: like remote
    agents, they are sent the checkpoint's files into their caches (content-addressed,
    verified), so a local cluster exercises what real devices do; pass the directory of
    a large checkpoint to skip copying it into every agent's cache.
    `journal`, `fallback`: as for `connect` (a request journal; the fallback chain).
    `ports`: fixed loopback ports, one per agent (default: free ports the agents pick),
    for an app that restarts and must find the same agents again.
    `link_emulation`: emulated links from this coordinator to the agents, by agent
    name (`transports.LinkEmulator`: delay, jitter, loss, disconnect windows), to see
    failover on a flaky Wi-Fi on one machine.
    """
    policy = as_policy(fallback)
    if n is None:
        n = len(presets) if presets else 1
    if n < 1:
        raise ConfigError(f"a local cluster needs at least one agent, got n={n}")
    preset_list = list(presets) if presets else [None] * n
    if len(preset_list) != n:
        raise ConfigError(f"got {len(preset_list)} presets for {n} agents; give one per agent")
    for name, values in (("memory_budgets", memory_budgets), ("cache_dirs", cache_dirs),
                         ("names", names), ("ports", ports)):
        if values is not None and len(values) != n:
            raise ConfigError(f"{name} has {len(values)} entries for {n} agents")
    from devices.cache import profile

    profile()  # measure (or read) this host's profile once, so the agents find it cached
    session = Path(tempfile.mkdtemp(prefix="edge-runtime-cluster-"))
    procs: list[AgentProcess] = []
    hub: Hub | None = None
    try:
        coordinator_keys = session / "coordinator-keys"
        security = Security.insecure_mode() if insecure else None
        if not insecure:
            pair = init_keys(coordinator_keys)
            security = Security.from_dir(coordinator_keys)
        envs = _preset_envs(preset_list)
        for index, preset in enumerate(preset_list):
            name = names[index] if names else f"agent{index}" + (f"-{preset}" if preset else "")
            agent_keys = None if insecure else session / f"keys-{index}"
            if agent_keys is not None:
                init_keys(agent_keys)
                trust(agent_keys, pair.public, "coordinator")
            cache = Path(cache_dirs[index]) if cache_dirs else session / f"cache-{index}"
            port = ports[index] if ports else 0
            args = ["--log-level", log_level, "agent", "--listen", f"tcp://127.0.0.1:{port}",
                    "--name", name, "--cache-dir", str(cache),
                    "--ready-file", str(session / f"ready-{index}.json")]
            args += ["--insecure"] if agent_keys is None else ["--keys", str(agent_keys)]
            if preset:
                args += ["--preset", preset]
            for directory in allow_checkpoint_dirs:
                args += ["--allow-checkpoint-dir", str(Path(directory).expanduser().resolve())]
            budget = memory_budgets[index] if memory_budgets else None
            if budget is not None:
                args += ["--memory-budget", str(budget)]
            env = dict(os.environ)
            env.update(envs[index])
            procs.append(AgentProcess(index, name, preset, cache, agent_keys,
                                      session / f"ready-{index}.json",
                                      session / f"agent-{index}.log", _agent_command(args), env))
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.wait_ready(timeouts.agent_start_s)
        assert security is not None
        hub = Hub(security, timeouts, link_emulation)
        links: list[AgentLink] = [hub.connect(proc.address, proc.public_key, proc.name, proc.alive)
                                  for proc in procs]
        local = assemble(hub, links, names=[proc.name for proc in procs], cls=LocalCluster,
                         policy=policy, journal=open_journal(journal))
        assert isinstance(local, LocalCluster)
        local.processes = procs
        local.session_dir = session
    except BaseException:
        if hub is not None:
            hub.close()
        _teardown(procs, session)
        raise
    try:
        yield local
    finally:
        try:
            local.close()
        finally:
            _teardown(procs, session)


def _preset_envs(presets: Sequence[str | None]) -> list[dict[str, str]]:
    """Per agent: the caps of its preset as env vars (thread pools sized before the child
    imports numpy/onnxruntime). When this machine has CPUs enough, emulated agents get
    disjoint CPU sets, so they do not steal each other's cores (honest scaling)."""
    if not any(presets):
        return [{} for _ in presets]
    from devices.cache import profile
    from devices.caps import caps_environment, caps_for_preset

    host = profile()
    caps = [None if name is None else caps_for_preset(name, host) for name in presets]
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    needed = sum(c.threads for c in caps if c is not None)
    envs: list[dict[str, str]] = []
    offset = 0
    for name, cap in zip(presets, caps, strict=True):
        if name is None or cap is None:
            envs.append({})
            continue
        if needed <= len(allowed):
            cpus = tuple(allowed[offset:offset + cap.threads])
            offset += cap.threads
            cap = caps_for_preset(name, host, cpus=cpus)
        envs.append(caps_environment(cap))
    return envs


def _teardown(procs: list[AgentProcess], session: Path) -> None:
    for proc in procs:
        if proc.process is not None and proc.process.poll() is None:
            proc.process.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.stop()
        except Exception:  # teardown must reach every process
            log.exception("stopping agent %s failed", proc.name)
    shutil.rmtree(session, ignore_errors=True)
