"""Message kinds and the records that travel inside control frames.

One ROUTER control socket per agent carries everything (docs/PROTOCOL.md).
The SDK and the agent both import these names, so a kind is spelled once.
Records are frozen dataclasses with `to_wire()` / `from_wire()` to the plain
dicts msgpack carries; nothing is pickled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edge_runtime.errors import DeployError

PROTOCOL_VERSION = 1

# coordinator -> agent requests (each answered by REPLY or ERROR with the same request id)
HELLO = "hello"  # -> name, version, profile, preset, caps, public key, backends
PING = "ping"  # echo meta and tensors (link measurement, heartbeats)
HEARTBEAT = "heartbeat"  # same as ping
PROFILE = "profile"  # -> the profile dict only
LOAD = "load"  # same as deploy
JOIN = "join"  # the cluster's members; the agent allows their public keys
PROBE_LINK = "probe_link"  # measure this agent's link to a peer agent
HAS_SHARDS = "has_shards"  # -> which digests are missing
PUT_CHUNK = "put_chunk"  # one chunk of a shard upload
DEPLOY = "deploy"  # load a deployment (kind + spec)
UNLOAD = "unload"  # drop a deployment
STATUS = "status"  # deployments, memory, emulation
SHUTDOWN = "shutdown"  # reply, then exit cleanly
# coordinator -> a stage holding an exit: replace its exit rule in place (-> REPLY)
SET_EXIT = "set_exit"
# coordinator -> first stage (no reply; answered later by RESULT or ERROR)
RUN = "run"
# agent -> agent (no reply)
ACTIVATION = "activation"
# agent -> coordinator
REPLY = "reply"
RESULT = "result"
ERROR = "error"

# Tensors carried along a pipeline are named with these prefixes so the model's
# own tensor names can never collide with the runtime's bookkeeping.
ACT_PREFIX = "a/"  # activations the next stage consumes
OUT_PREFIX = "o/"  # model outputs collected so far


@dataclass(frozen=True)
class ExitRule:
    """An early exit attached to a stage: fire when `policy(output) passes threshold`."""

    name: str
    output: str
    policy: str
    threshold: float
    # outputs of the exits before this one, in network order (the "patience"
    # policy compares their predictions; its threshold is how many must agree)
    previous: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        data = asdict(self)
        data["previous"] = list(self.previous)
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ExitRule:
        return cls(
            name=str(data["name"]),
            output=str(data["output"]),
            policy=str(data["policy"]),
            threshold=float(data["threshold"]),
            previous=tuple(str(x) for x in data.get("previous", ())),
        )


@dataclass(frozen=True)
class Hop:
    """The agent (and its deployment id there) a stage sends its activations to."""

    name: str
    address: str
    public_key: str | None
    deployment_id: str

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Hop:
        key = data.get("public_key")
        return cls(name=str(data["name"]), address=str(data["address"]),
                   public_key=None if key is None else str(key),
                   deployment_id=str(data["deployment_id"]))


@dataclass(frozen=True)
class StageSpec:
    """What one agent needs to serve one stage of a pipeline deployment.

    `inputs` are the tensors the stage receives (model inputs for stage 0,
    the previous cut's crossing set otherwise); `forward` the ones it must
    send on (its shard's outputs plus pass-through inputs); `outputs` the model
    outputs produced here. `signature` (stage 0 only) is the model's input
    signature as `[name, dtype, shape]` so the first agent checks requests too.
    """

    deployment_id: str
    stage: int
    n_stages: int
    shard_sha256: str
    shard_ext: str
    inputs: tuple[str, ...]
    forward: tuple[str, ...]
    outputs: tuple[str, ...]
    exit: ExitRule | None = None
    next_hop: Hop | None = None
    memory_bytes: int | None = None
    signature: tuple[tuple[str, str, tuple[int | str | None, ...]], ...] = ()
    allow_keys: tuple[str, ...] = field(default=())

    def to_wire(self) -> dict[str, Any]:
        return {
            "deployment_id": self.deployment_id,
            "stage": self.stage,
            "n_stages": self.n_stages,
            "shard_sha256": self.shard_sha256,
            "shard_ext": self.shard_ext,
            "inputs": list(self.inputs),
            "forward": list(self.forward),
            "outputs": list(self.outputs),
            "exit": None if self.exit is None else self.exit.to_wire(),
            "next_hop": None if self.next_hop is None else self.next_hop.to_wire(),
            "memory_bytes": self.memory_bytes,
            "signature": [[n, d, list(s)] for n, d, s in self.signature],
            "allow_keys": list(self.allow_keys),
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> StageSpec:
        try:
            exit_data = data.get("exit")
            hop = data.get("next_hop")
            memory = data.get("memory_bytes")
            return cls(
                deployment_id=str(data["deployment_id"]),
                stage=int(data["stage"]),
                n_stages=int(data["n_stages"]),
                shard_sha256=str(data["shard_sha256"]),
                shard_ext=str(data["shard_ext"]),
                inputs=tuple(str(x) for x in data["inputs"]),
                forward=tuple(str(x) for x in data["forward"]),
                outputs=tuple(str(x) for x in data["outputs"]),
                exit=None if exit_data is None else ExitRule.from_wire(exit_data),
                next_hop=None if hop is None else Hop.from_wire(hop),
                memory_bytes=None if memory is None else int(memory),
                signature=tuple(
                    (str(n), str(d), tuple(s)) for n, d, s in data.get("signature", [])
                ),
                allow_keys=tuple(str(k) for k in data.get("allow_keys", [])),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DeployError(f"malformed stage spec: {error!r}") from error


@dataclass(frozen=True)
class StageTiming:
    """Where one stage of one request spent its time (seconds).

    `queue_s`: waiting for the stage's worker; `compute_s`: running the shard
    (dilated to the emulated device's speed when the agent emulates one);
    `transfer_s`: from the previous hop's send to arrival here (wall clocks,
    so only meaningful between hosts with synchronised clocks, e.g. loopback);
    `started_at`: wall-clock time the compute began (shows pipelining overlap).
    """

    stage: int
    agent: str
    queue_s: float
    compute_s: float
    transfer_s: float
    emulated: bool = False
    started_at: float = 0.0

    def to_wire(self) -> list[Any]:
        return [self.stage, self.agent, self.queue_s, self.compute_s, self.transfer_s,
                self.emulated, self.started_at]

    @classmethod
    def from_wire(cls, data: list[Any]) -> StageTiming:
        stage, agent, queue_s, compute_s, transfer_s, emulated, started_at = data
        return cls(int(stage), str(agent), float(queue_s), float(compute_s),
                   float(transfer_s), bool(emulated), float(started_at))
