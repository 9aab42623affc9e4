"""Messages that name a deployment: the pipeline data path, `set_exit`, and llm-shard's.

The agent hands each of these to the deployment named by `deployment_id`. `run`,
`activation` and `result` are not answered (a `result` or an error frame reaches
the coordinator later); the others are answered by their reply record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge_runtime.protocol import kinds as k
from edge_runtime.protocol.fields import (
    blob,
    fail,
    flag,
    ident,
    integer,
    number,
    optional,
    plain,
    seq,
    sha256_hex,
    text,
    wire,
)
from edge_runtime.protocol.record import Record
from edge_runtime.protocol.records import MAX_MEMBERS, MAX_STAGES, ExitRule, StageTiming

MAX_IDENTITY_BYTES = 255
"""A ZeroMQ routing identity is at most 255 bytes."""
MAX_POSITION = 1 << 24
# Sequences one step may carry (an agent's KV slots are bounded by its deploy's max_batch).
MAX_BATCH = 256
"""Largest token position of an llm_step (far above any context an agent holds)."""

_timings = seq(StageTiming.parse, MAX_STAGES)
_sent_at = number()


@dataclass(frozen=True)
class Run(Record):
    """Coordinator -> first stage: model inputs as tensors (checked against the signature)."""

    KIND = k.RUN
    deployment_id: str = field(metadata=wire(ident))
    sent_at: float = field(metadata=wire(_sent_at))


@dataclass(frozen=True)
class Activation(Record):
    """Stage k -> stage k+1's agent: tensors `a/<name>` (activations) and `o/<name>`
    (model outputs so far); `client` is the coordinator's routing identity, to which
    the answering stage sends the result."""

    KIND = k.ACTIVATION
    deployment_id: str = field(metadata=wire(ident))
    client: bytes = field(metadata=wire(blob(MAX_IDENTITY_BYTES)))
    stage: int = field(metadata=wire(integer(0, MAX_STAGES - 1)))
    timings: tuple[StageTiming, ...] = field(metadata=wire(_timings))
    sent_at: float = field(metadata=wire(_sent_at))


@dataclass(frozen=True)
class RunResult(Record):
    """The answering stage -> coordinator: collected model outputs as tensors; `exit` is
    the exit that fired (None: the model's last stage)."""

    KIND = k.RESULT
    deployment_id: str = field(metadata=wire(ident))
    exit: str | None = field(metadata=wire(optional(ident)))
    stage: int = field(metadata=wire(integer(0, MAX_STAGES - 1)))
    timings: tuple[StageTiming, ...] = field(metadata=wire(_timings))
    sent_at: float = field(metadata=wire(_sent_at))


@dataclass(frozen=True)
class SetExit(Record):
    """Replace a stage's exit rule in place (None: never stop there)."""

    KIND = k.SET_EXIT
    deployment_id: str = field(metadata=wire(ident))
    exit: ExitRule | None = field(metadata=wire(optional(ExitRule.parse)))


@dataclass(frozen=True)
class SetExitReply(Record):
    KIND = k.REPLY
    deployment_id: str = field(metadata=wire(ident))
    exit: ExitRule | None = field(metadata=wire(optional(ExitRule.parse)))


@dataclass(frozen=True)
class LlmReady(Record):
    """Answered once the share is loaded (its collective endpoint) or failed (the error)."""

    KIND = k.LLM_READY
    deployment_id: str = field(metadata=wire(ident))


@dataclass(frozen=True)
class LlmReadyReply(Record):
    KIND = k.REPLY
    deployment_id: str = field(metadata=wire(ident))
    address: str = field(metadata=wire(ident))
    status: dict[str, Any] = field(metadata=wire(plain()))


@dataclass(frozen=True)
class LlmConnect(Record):
    """Every member's collective endpoint, in rank order."""

    KIND = k.LLM_CONNECT
    deployment_id: str = field(metadata=wire(ident))
    endpoints: tuple[str, ...] = field(metadata=wire(seq(ident, MAX_MEMBERS)))


@dataclass(frozen=True)
class LlmConnectReply(Record):
    KIND = k.REPLY
    deployment_id: str = field(metadata=wire(ident))
    connected: int = field(metadata=wire(integer(0, MAX_MEMBERS)))


@dataclass(frozen=True)
class LlmStep(Record):
    """One forward step for one or more sequences: tensor `ids` (int64) holds each
    sequence's tokens in turn; sequence i has `lengths[i]` of them, placed at positions
    `starts[i]`.. of KV slot `slots[i]`. The hub answers with one row of logits per
    sequence (its last token) with `last_only`, else one per token."""

    KIND = k.LLM_STEP
    deployment_id: str = field(metadata=wire(ident))
    slots: tuple[int, ...] = field(default=(0,), metadata=wire(
        seq(integer(0, MAX_BATCH - 1), MAX_BATCH)))
    starts: tuple[int, ...] = field(default=(0,), metadata=wire(
        seq(integer(0, MAX_POSITION), MAX_BATCH)))
    lengths: tuple[int, ...] = field(default=(1,), metadata=wire(
        seq(integer(1, MAX_POSITION), MAX_BATCH)))
    last_only: bool = field(default=True, metadata=wire(flag()))

    def _checked(self, where: str) -> LlmStep:
        if not len(self.slots) == len(self.starts) == len(self.lengths) >= 1:
            fail(where, f"has {len(self.slots)} slots, {len(self.starts)} starts and "
                        f"{len(self.lengths)} lengths; give one of each per sequence")
        if len(set(self.slots)) != len(self.slots):
            fail(f"{where}.slots", "names a KV slot twice")
        return self


@dataclass(frozen=True)
class LlmStepReply(Record):
    """The hub's answer: tensor `logits` (float32), and where the step's time went."""

    KIND = k.REPLY
    deployment_id: str = field(metadata=wire(ident))
    compute_s: float = field(metadata=wire(number()))
    comm_s: float = field(metadata=wire(number()))


@dataclass(frozen=True)
class LlmPut(Record):
    """One chunk of a checkpoint file; tensor `data` (uint8[n]) holds its bytes."""

    KIND = k.LLM_PUT
    deployment_id: str = field(metadata=wire(ident))
    name: str = field(metadata=wire(text(255, min_len=1)))
    offset: int = field(metadata=wire(integer(0)))
    sha256: str = field(metadata=wire(sha256_hex))


@dataclass(frozen=True)
class LlmPutReply(Record):
    KIND = k.REPLY
    deployment_id: str = field(metadata=wire(ident))
    complete: bool = field(metadata=wire(flag()))


DEPLOYMENT_MESSAGES: tuple[type[Record], ...] = (Run, Activation, SetExit, LlmReady,
                                                 LlmConnect, LlmStep, LlmPut)
"""Messages the agent hands to the deployment their `deployment_id` names."""
