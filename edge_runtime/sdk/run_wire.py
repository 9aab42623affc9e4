"""One pipeline request on the wire: its attempt sent, its `result` frame read.

Why apart from `deployment.py`: the deployment decides *when* a request is sent, sent
again, failed over or answered elsewhere; this module is what one attempt puts on
the wire (a `run` frame with a fresh wire id, so the hub can drop answers to an
abandoned attempt) and what the answer becomes (a `Result` with the plan's
predictions next to the measured stages, merged with the partial results of earlier
stages whose exits did not fire), plus the test of whether an agent that
did not answer is lost or merely busy. None of it depends on the failover state.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from edge_runtime.errors import AgentError, AgentUnavailableError, ConfigError
from edge_runtime.protocol import Run, RunResult
from edge_runtime.protocol.kinds import RESULT
from edge_runtime.sdk.agent_link import AgentLink
from edge_runtime.sdk.agents import Agents, parse_reply
from edge_runtime.sdk.result import Result
from edge_runtime.sdk.tickets import Ticket
from edge_runtime.sdk.tracing import TraceCapture
from transports.wire import Frame


def owned(array: np.ndarray) -> np.ndarray:
    """`array` as an output the caller may keep and write: a received tensor is a
    writable view on its own ZeroMQ message (nothing else holds it), so it is returned
    as it is — a 128 KB copy per request was a few percent of a small model's whole
    overhead; a read-only one (received as bytes) or a misaligned one (libzmq puts small
    messages at any offset of its read buffer) is copied, so callers always get an
    aligned array."""
    return array if array.flags.writeable and array.flags.aligned else np.array(array)


def send_attempt(cluster: Agents, first: AgentLink, deployment_id: str, ticket: Ticket,
                 tracer: TraceCapture | None) -> None:
    """Send `ticket`'s inputs to the first stage (`deployment_id` on `first`) under a
    fresh wire id, recorded in `ticket.request_id`."""
    hub = cluster.hub
    request_id = hub.next_id()
    run = Run(deployment_id=deployment_id, sent_at=time.time(),
              trace_id=0 if tracer is None else tracer.trace_id)
    ticket.request_id = request_id
    hub.send(first, run.frame(request_id, tensors=ticket.arrays),
             timeout_s=cluster.timeouts.hello_s)


def result_record(frame: Frame, default_agent: str) -> RunResult:
    """The `RunResult` of an answer `frame` (sent by `default_agent` when the frame does
    not say); `AgentError` for a frame of another kind."""
    agent = frame.sender or default_agent
    if frame.kind != RESULT:
        raise AgentError(f"answered with an unexpected {frame.kind[:64]!r} frame", agent=agent)
    return parse_reply(RunResult, frame.meta, agent, RESULT)


def read_result(frame: Frame, result: RunResult, ticket: Ticket, *, default_agent: str,
                predicted_latency_s: float, predicted_stages: tuple[float, ...],
                tracer: TraceCapture | None, partials: Sequence[Frame] = ()) -> Result:
    """The `Result` of `ticket` from its answer `frame` (`result`, its record) and the
    `partials` of the same attempt: model outputs earlier stages sent before the request
    went on (`result.elsewhere` names them), merged into the one result."""
    agent = frame.sender or default_agent
    outputs: dict[str, np.ndarray] = {}
    for partial in partials:
        sender = partial.sender or default_agent
        record = parse_reply(RunResult, partial.meta, sender, RESULT)
        if tracer is not None:
            tracer.received(sender, record.sent_at, partial.request_id, "partial")
        outputs.update((name, owned(value)) for name, value in partial.tensors.items()
                       if name in result.elsewhere)
    if tracer is not None:
        tracer.received(agent, result.sent_at, frame.request_id, "result")
        tracer.record("request", "run", time.time() - (time.perf_counter()
                      - ticket.started), request_id=frame.request_id)
    outputs.update((name, owned(value)) for name, value in frame.tensors.items())
    return Result(
        outputs=outputs, exit=result.exit, stage=result.stage,
        latency_s=time.perf_counter() - ticket.started, stages=result.timings,
        predicted_latency_s=predicted_latency_s,
        predicted_stages=predicted_stages, request_id=frame.request_id,
        attempts=ticket.attempts, key=ticket.key, notes=tuple(ticket.notes),
    )


def is_lost(cluster: Agents, error: AgentUnavailableError) -> bool:
    """Whether the hub declared `error.agent` lost (dead, stopped, unreachable), as
    opposed to a request that merely timed out while its agents answer heartbeats."""
    try:
        link = cluster.link(error.agent)
    except ConfigError:
        return False
    return link.dead or (link.alive is not None and not link.alive())


__all__ = ["is_lost", "owned", "read_result", "result_record", "send_attempt"]
