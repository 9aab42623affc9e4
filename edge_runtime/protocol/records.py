"""Records nested inside messages: signatures, exits, hops, stage and shard specs.

Frozen dataclasses (`Record`), each field declared with its check, so a spec that
reaches an agent is validated field by field before anything is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_runtime.protocol.fields import (
    MAX_NAME,
    MAX_TEXT,
    fail,
    fixed,
    flag,
    ident,
    integer,
    number,
    one_of,
    optional,
    plain,
    public_key,
    seq,
    sha256_hex,
    text,
    wire,
)
from edge_runtime.protocol.kinds import ERROR
from edge_runtime.protocol.record import Record

MAX_TENSORS = 1024
"""Most inputs/outputs/forwarded tensors of one stage."""
MAX_DIMS = 32
MAX_STAGES = 256
MAX_MEMBERS = 256
"""Most agents in one deployment (stages of a pipeline, members of a group)."""
MAX_PLAN_JSON = 16 * 1024 * 1024
"""Largest tensor plan (JSON) in an llm-shard spec."""
COLLECTIVE_TIMEOUT_S = 10.0
"""A member silent this long inside one allreduce or gather fails the step on every live
member, naming it: far above one layer's compute on an emulated Pi (tens of ms), short
enough that a dead agent is reported well within the coordinator's request timeout."""
QUANTIZE_CHOICES: tuple[str | None, ...] = (None, "q4")
"""Weight formats an agent serves: None (fp32, resident or streamed), "q4" (4-bit)."""

_DIM = optional(one_of(integer(0), text(64)))

_DTYPES: dict[str, np.dtype | None] = {}
"""numpy dtype of a spec's dtype name (None: numpy does not know it), parsed once per
name: `accepts` runs on every request, twice (the SDK and the first stage)."""
MAX_DTYPE_NAMES = 256
"""Dtype names kept in `_DTYPES` (a handful are real; the rest of a hostile stream of
made-up names is parsed each time, not kept)."""


def _numpy_dtype(name: str) -> np.dtype | None:
    if name in _DTYPES:
        return _DTYPES[name]
    try:
        dtype: np.dtype | None = np.dtype(name)
    except TypeError:
        dtype = None
    if len(_DTYPES) < MAX_DTYPE_NAMES:
        _DTYPES[name] = dtype
    return dtype


@dataclass(frozen=True)
class TensorSpec(Record):
    """Name, dtype and shape of one model input or output.

    A dimension is an int when fixed and a string (its symbolic name) or None
    when any size is accepted (e.g. a dynamic batch).
    """

    name: str = field(metadata=wire(text(MAX_NAME)))
    dtype: str = field(metadata=wire(text(32, min_len=1)))
    shape: tuple[int | str | None, ...] = field(metadata=wire(seq(_DIM, MAX_DIMS)))

    def accepts(self, array: np.ndarray) -> bool:
        """True if `array` matches this spec's dtype, rank and fixed dimensions."""
        dtype = _numpy_dtype(self.dtype)
        if dtype is None or dtype != array.dtype or array.ndim != len(self.shape):
            return False
        return all(
            not isinstance(dim, int) or dim == size
            for dim, size in zip(self.shape, array.shape, strict=True)
        )

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True)
class ExitRule(Record):
    """An early exit attached to a stage: fire when `policy(output) passes threshold`.

    `previous`: outputs of the exits before this one, in network order (the
    "patience" policy compares their predictions; its threshold is how many agree).
    """

    name: str = field(metadata=wire(ident))
    output: str = field(metadata=wire(ident))
    policy: str = field(metadata=wire(text(64, min_len=1)))
    threshold: float = field(metadata=wire(number(-1e9, 1e9)))
    previous: tuple[str, ...] = field(default=(), metadata=wire(seq(ident, MAX_TENSORS)))


@dataclass(frozen=True)
class Hop(Record):
    """The agent (and its deployment id there) a stage sends its activations to."""

    name: str = field(metadata=wire(ident))
    address: str = field(metadata=wire(ident))
    public_key: str | None = field(metadata=wire(optional(public_key)))
    deployment_id: str = field(metadata=wire(ident))


@dataclass(frozen=True)
class StageSpec(Record):
    """What one agent needs to serve one stage of a pipeline deployment ("onnx-stage").

    `inputs` are the tensors the stage receives (model inputs for stage 0,
    the previous cut's crossing set otherwise); `forward` the ones it must
    send on (its shard's outputs plus pass-through inputs); `outputs` the model
    outputs produced here. `signature` (stage 0 only) is the model's input
    signature, so the first agent checks requests too. `allow_keys`: the
    cluster's agents, admitted for activations.
    """

    deployment_id: str = field(metadata=wire(ident))
    stage: int = field(metadata=wire(integer(0, MAX_STAGES - 1)))
    n_stages: int = field(metadata=wire(integer(1, MAX_STAGES)))
    shard_sha256: str = field(metadata=wire(sha256_hex))
    shard_ext: str = field(metadata=wire(text(16, min_len=1)))
    inputs: tuple[str, ...] = field(metadata=wire(seq(ident, MAX_TENSORS)))
    forward: tuple[str, ...] = field(metadata=wire(seq(ident, MAX_TENSORS)))
    outputs: tuple[str, ...] = field(metadata=wire(seq(ident, MAX_TENSORS)))
    exit: ExitRule | None = field(default=None, metadata=wire(optional(ExitRule.parse)))
    next_hop: Hop | None = field(default=None, metadata=wire(optional(Hop.parse)))
    memory_bytes: int | None = field(default=None, metadata=wire(optional(integer(0))))
    signature: tuple[TensorSpec, ...] = field(
        default=(), metadata=wire(seq(TensorSpec.parse, MAX_TENSORS)))
    allow_keys: tuple[str, ...] = field(
        default=(), metadata=wire(seq(public_key, MAX_MEMBERS)))

    def _checked(self, where: str) -> StageSpec:
        if self.stage >= self.n_stages:
            fail(f"{where}.stage", f"{self.stage} must be below n_stages {self.n_stages}")
        return self


@dataclass(frozen=True)
class StageTiming(Record):
    """Where one stage of one request spent its time (seconds).

    `queue_s`: waiting for the stage's worker; `compute_s`: running the shard
    (dilated to the emulated device's speed when the agent emulates one);
    `transfer_s`: from the previous hop's send to arrival here (wall clocks,
    so only meaningful between hosts with synchronised clocks, e.g. loopback);
    `started_at`: wall-clock time the compute began (shows pipelining overlap).
    """

    stage: int = field(metadata=wire(integer(0, MAX_STAGES - 1)))
    agent: str = field(metadata=wire(text(MAX_NAME)))
    queue_s: float = field(metadata=wire(number()))
    compute_s: float = field(metadata=wire(number()))
    transfer_s: float = field(metadata=wire(number()))
    emulated: bool = field(default=False, metadata=wire(flag()))
    started_at: float = field(default=0.0, metadata=wire(number()))


_FILE = fixed(ident, integer(0))


@dataclass(frozen=True)
class ShardSpec(Record):
    """What one agent needs to serve its share of an LLM ("llm-shard").

    `files`: (name, size) of the checkpoint's files, for agents that must receive
    them. `blas_threads`: BLAS threads for this share (None: the library's default),
    set when several agents share one host. `quantize`: the weight format, None (fp32)
    or "q4"; every member of a group uses the same one, since partial sums are added.
    """

    checkpoint: str = field(metadata=wire(text(4096)))
    checkpoint_digest: str = field(metadata=wire(text(MAX_NAME, min_len=1)))
    plan_json: str = field(metadata=wire(text(MAX_PLAN_JSON, min_len=2)))
    rank: int = field(metadata=wire(integer(0, MAX_MEMBERS - 1)))
    names: tuple[str, ...] = field(metadata=wire(seq(ident, MAX_MEMBERS)))
    public_keys: tuple[str | None, ...] = field(
        metadata=wire(seq(optional(public_key), MAX_MEMBERS)))
    max_context: int = field(metadata=wire(integer(1, 1 << 24)))
    memory_budget: int | None = field(metadata=wire(optional(integer(0))))
    memory_bytes: int = field(metadata=wire(integer(0)))
    advertise_host: str = field(metadata=wire(text(MAX_NAME)))
    collective_timeout_s: float = field(
        default=COLLECTIVE_TIMEOUT_S, metadata=wire(number(0.0, 86400.0, above=True)))
    files: tuple[tuple[str, int], ...] = field(
        default=(), metadata=wire(seq(_FILE, 1024)))
    blas_threads: int | None = field(default=None, metadata=wire(optional(integer(1, 4096))))
    quantize: str | None = field(default=None, metadata=wire(optional(text(16))))
    # sequences decoded in one step at most: one KV cache slot each
    max_batch: int = field(default=1, metadata=wire(integer(1, 256)))
    # the format the group's allreduces carry activations in: "fp32" (exact), "bf16",
    # "fp16" or "q8" (`transports.syncformat`); every member of a group uses the same
    sync: str = field(default="fp32", metadata=wire(text(8, min_len=1)))

    def _checked(self, where: str) -> ShardSpec:
        if self.rank >= len(self.names) or len(self.public_keys) != len(self.names):
            fail(f"{where}.rank", f"{self.rank} of {len(self.names)} members with "
                 f"{len(self.public_keys)} keys")
        if self.quantize not in QUANTIZE_CHOICES:
            fail(f"{where}.quantize", f"{self.quantize!r} is not a weight format this agent "
                 "serves (None or 'q4'); upgrade the agent or deploy with quantize=None")
        return self


@dataclass(frozen=True)
class LlmStageSpec(Record):
    """One agent's part of a pipelined LLM ("llm-stage"): `shard` is its share within
    its stage's tensor-parallel group (the plan is the stage's, its shares hold the
    stage's layers; rank, names and keys are the group's); `next_hops` are the agents of
    the next stage (empty for the last), to which the group's hub sends hidden states."""

    shard: ShardSpec = field(metadata=wire(ShardSpec.parse))
    stage: int = field(metadata=wire(integer(0, MAX_STAGES - 1)))
    n_stages: int = field(metadata=wire(integer(1, MAX_STAGES)))
    next_hops: tuple[Hop, ...] = field(default=(), metadata=wire(seq(Hop.parse, MAX_MEMBERS)))
    # Benchmarks only: emulate the links of everything this agent sends for the
    # deployment (its group's collectives, hidden states, the answer) with this one-way
    # delay (s) and bandwidth (bytes/s, None: unlimited); `transports.linkemu`.
    emulate_delay_s: float = field(default=0.0, metadata=wire(number(0.0, 10.0)))
    emulate_bandwidth: float | None = field(
        default=None, metadata=wire(optional(number(1.0, 1e13, above=True))))

    def _checked(self, where: str) -> LlmStageSpec:
        if self.stage >= self.n_stages:
            fail(f"{where}.stage", f"{self.stage} of {self.n_stages} stages")
        if (self.stage == self.n_stages - 1) != (not self.next_hops):
            fail(f"{where}.next_hops", "only the last stage has no next hop")
        return self


@dataclass(frozen=True)
class Peer(Record):
    """One agent of a cluster as `join` introduces it."""

    name: str = field(metadata=wire(ident))
    public_key: str | None = field(metadata=wire(optional(public_key)))


@dataclass(frozen=True)
class Gone(Record):
    """A deployment a coordinator renewed that the agent no longer has, and why."""

    deployment_id: str = field(metadata=wire(ident))
    reason: str = field(metadata=wire(text(MAX_TEXT)))


@dataclass(frozen=True)
class ErrorInfo(Record):
    """An error frame's meta (`transports.wire.error_frame`): the error's class name on
    the sender, its message, and details such as the agent it names."""

    KIND = ERROR
    error_type: str = field(metadata=wire(text(MAX_NAME)))
    message: str = field(metadata=wire(text(MAX_TEXT)))
    details: dict[str, object] | None = field(default=None, metadata=wire(optional(plain())))
