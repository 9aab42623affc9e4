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
from edge_runtime.protocol.records import (
    MAX_MEMBERS,
    MAX_STAGES,
    MAX_TENSORS,
    ExitRule,
    StageTiming,
)

MAX_IDENTITY_BYTES = 255
"""A ZeroMQ routing identity is at most 255 bytes."""
MAX_POSITION = 1 << 24
MAX_STOP_IDS = 256  # stop token ids of one decode run
# Sequences one step may carry (an agent's KV slots are bounded by its deploy's max_batch).
MAX_BATCH = 256
"""Largest token position of an llm_step (far above any context an agent holds)."""

_timings = seq(StageTiming.parse, MAX_STAGES)
_names = seq(ident, MAX_TENSORS)
_sent_at = number()
_trace_id = integer(0, 2**63 - 1)
"""A request's trace id (`protocol/trace.py`): 0 = not traced, else every agent on its
path records spans under this id."""


@dataclass(frozen=True)
class Run(Record):
    """Coordinator -> first stage: model inputs as tensors (checked against the signature)."""

    KIND = k.RUN
    deployment_id: str = field(metadata=wire(ident))
    sent_at: float = field(metadata=wire(_sent_at))
    trace_id: int = field(default=0, metadata=wire(_trace_id))  # 0: not traced


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
    trace_id: int = field(default=0, metadata=wire(_trace_id))  # the run's, passed on
    # model outputs earlier stages sent the coordinator themselves (partial results):
    # they do not ride along; each exit output's predicted class per row travels as
    # tensor `v/<name>` (int64) for later exits' patience rules
    elsewhere: tuple[str, ...] = field(default=(), metadata=wire(_names))


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
    # `partial`: not the answer but the model outputs of stage `stage`, sent as the
    # request goes on (exit heads that did not fire); the answer's `elsewhere` names
    # every output sent so, for the coordinator to merge into its one result
    partial: bool = field(default=False, metadata=wire(flag()))
    elsewhere: tuple[str, ...] = field(default=(), metadata=wire(_names))


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


MAX_RNG_STATE_BYTES = 64
"""A sampler's generator state (numpy's PCG64: 37 bytes) travels as an opaque blob."""


@dataclass(frozen=True)
class StepSampling(Record):
    """How the hub samples one sequence's next token: the engine's settings and its
    generator's state (empty when greedy: no draw is made)."""

    temperature: float = field(default=0.0, metadata=wire(number()))
    top_k: int = field(default=0, metadata=wire(integer(0, MAX_POSITION)))
    top_p: float = field(default=1.0, metadata=wire(number(0.0, 1.0, above=True)))
    rng: bytes = field(default=b"", metadata=wire(blob(MAX_RNG_STATE_BYTES)))


@dataclass(frozen=True)
class LlmStep(Record):
    """One forward step for one or more sequences: tensor `ids` (int64) holds each
    sequence's tokens in turn; sequence i has `lengths[i]` of them, placed at positions
    `starts[i]`.. of KV slot `slots[i]`. The hub answers with one row of logits per
    sequence (its last token) with `last_only`, else one per token — or, when the step
    carries `sampling` (one per sequence, with `last_only`), with each sequence's next
    token sampled where the logits are, and no logits.

    `decode_tokens` > 0 (one sampled sequence) runs the decode loop on the agents: after
    this step's token the hub tells the members (a group broadcast) to feed it and go on,
    up to `decode_tokens` more tokens or one in `stop_ids`, with no message to the
    coordinator per token but the answer: the i-th token answers request id
    `request_id + i` (the coordinator reserves the block), the last with `final`. An
    `llm_cancel` ends the run at the next token."""

    KIND = k.LLM_STEP
    deployment_id: str = field(metadata=wire(ident))
    slots: tuple[int, ...] = field(default=(0,), metadata=wire(
        seq(integer(0, MAX_BATCH - 1), MAX_BATCH)))
    starts: tuple[int, ...] = field(default=(0,), metadata=wire(
        seq(integer(0, MAX_POSITION), MAX_BATCH)))
    lengths: tuple[int, ...] = field(default=(1,), metadata=wire(
        seq(integer(1, MAX_POSITION), MAX_BATCH)))
    last_only: bool = field(default=True, metadata=wire(flag()))
    trace_id: int = field(default=0, metadata=wire(_trace_id))  # 0: not traced
    sampling: tuple[StepSampling, ...] = field(default=(), metadata=wire(
        seq(StepSampling.parse, MAX_BATCH)))  # empty: answer logits
    decode_tokens: int = field(default=0, metadata=wire(integer(0, MAX_POSITION)))
    stop_ids: tuple[int, ...] = field(default=(), metadata=wire(
        seq(integer(0), MAX_STOP_IDS)))

    def _checked(self, where: str) -> LlmStep:
        if not len(self.slots) == len(self.starts) == len(self.lengths) >= 1:
            fail(where, f"has {len(self.slots)} slots, {len(self.starts)} starts and "
                        f"{len(self.lengths)} lengths; give one of each per sequence")
        if len(set(self.slots)) != len(self.slots):
            fail(f"{where}.slots", "names a KV slot twice")
        if self.sampling and (len(self.sampling) != len(self.slots) or not self.last_only):
            fail(f"{where}.sampling", "needs one entry per sequence and last_only")
        if self.decode_tokens and (len(self.sampling) != 1):
            fail(f"{where}.decode_tokens", "decodes one sampled sequence; send `sampling` "
                 "for exactly one sequence")
        return self


@dataclass(frozen=True)
class LlmStepReply(Record):
    """The hub's answer: tensor `logits` (float32), or for a step with `sampling` each
    sequence's sampled token and its generator's state after the draw; and where the
    step's time went."""

    KIND = k.REPLY
    deployment_id: str = field(metadata=wire(ident))
    compute_s: float = field(metadata=wire(number()))
    comm_s: float = field(metadata=wire(number()))
    tokens: tuple[int, ...] = field(default=(), metadata=wire(seq(integer(0), MAX_BATCH)))
    rngs: tuple[bytes, ...] = field(default=(), metadata=wire(
        seq(blob(MAX_RNG_STATE_BYTES), MAX_BATCH)))
    final: bool = field(default=True, metadata=wire(flag()))  # a decode run's last answer

    def _checked(self, where: str) -> LlmStepReply:
        if len(self.rngs) != len(self.tokens):
            fail(f"{where}.rngs", "needs one generator state per token")
        return self


@dataclass(frozen=True)
class LlmCancel(Record):
    """Coordinator -> a decode run's hub: end the run `request_id` (the `llm_step` that
    started it) at its next token (the caller stopped reading: a stop string, a closed
    stream, a deadline). Not answered; the run's next answer is its `final` one."""

    KIND = k.LLM_CANCEL
    deployment_id: str = field(metadata=wire(ident))
    request_id: int = field(metadata=wire(integer(0)))


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


@dataclass(frozen=True)
class LlmHidden(Record):
    """A pipeline stage's hub -> each agent of the next stage ("llm-stage"): the step's
    tensors `ids` (int64) and `hidden` (float32 [tokens, hidden]) after stage `stage`;
    the sequences as in `llm_step`. `client` is the coordinator's routing identity, to
    which the last stage's hub answers (`LlmStepReply` with the step's request id)."""

    KIND = k.LLM_HIDDEN
    deployment_id: str = field(metadata=wire(ident))
    client: bytes = field(metadata=wire(blob(MAX_IDENTITY_BYTES)))
    stage: int = field(metadata=wire(integer(0, MAX_STAGES - 1)))
    slots: tuple[int, ...] = field(metadata=wire(seq(integer(0, MAX_BATCH - 1), MAX_BATCH)))
    starts: tuple[int, ...] = field(metadata=wire(seq(integer(0, MAX_POSITION), MAX_BATCH)))
    lengths: tuple[int, ...] = field(metadata=wire(seq(integer(1, MAX_POSITION), MAX_BATCH)))
    last_only: bool = field(metadata=wire(flag()))
    compute_s: float = field(default=0.0, metadata=wire(number()))  # the stages' so far
    comm_s: float = field(default=0.0, metadata=wire(number()))

    def _checked(self, where: str) -> LlmHidden:
        if not len(self.slots) == len(self.starts) == len(self.lengths) >= 1:
            fail(where, "needs one slot, start and length per sequence")
        return self


DEPLOYMENT_MESSAGES: tuple[type[Record], ...] = (Run, Activation, SetExit, LlmReady,
                                                 LlmConnect, LlmStep, LlmPut, LlmHidden,
                                                 LlmCancel)
"""Messages the agent hands to the deployment their `deployment_id` names."""
