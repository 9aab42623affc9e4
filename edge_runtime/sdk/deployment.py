"""`Deployment`: a model loaded on the cluster; `run` and the pipelined `run_many`.

`run` sends the inputs to the first stage's agent and waits for the `result`
frame that the last stage (or the stage whose exit fired) sends straight back.
`run_many` keeps up to `max_in_flight` requests in the pipeline at once, so
stage k works on request i+1 while stage k+1 works on request i, and yields
results in input order.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from edge_runtime.errors import AgentError, ConfigError
from edge_runtime.protocol import (
    Run,
    RunResult,
    SetExit,
    SetExitReply,
    StageSpec,
    TensorSpec,
    Unload,
    UnloadReply,
)
from edge_runtime.protocol.kinds import RESULT
from edge_runtime.sdk.agents import Agents, parse_reply
from edge_runtime.sdk.config import DEFAULT_MAX_IN_FLIGHT
from edge_runtime.sdk.errors_map import error_from_frame
from edge_runtime.sdk.exits import exit_rules, exit_thresholds
from edge_runtime.sdk.hub import AgentLink
from edge_runtime.sdk.inputs import check_inputs
from edge_runtime.sdk.result import Result
from transports.wire import Frame

log = logging.getLogger(__name__)


def _number(value: Any, exit_name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"exit {exit_name!r}: threshold {value!r} is not a number") from None


class Deployment:
    """A model deployed on a cluster (one pipeline of stages)."""

    def __init__(self, cluster: Agents, deployment_id: str, plan: Any,
                 specs: list[StageSpec], bytes_sent: int = 0) -> None:
        self.cluster = cluster
        self.id = deployment_id
        self.plan = plan
        self.specs = tuple(specs)
        self.bytes_sent = bytes_sent  # shard bytes this deploy transferred (0: all cached)
        self.signature = tuple(TensorSpec(s.name, s.dtype, tuple(s.shape))
                               for s in plan.model_inputs)
        self.agents = tuple(dict.fromkeys(stage.device for stage in plan.stages))
        self._links: list[AgentLink] = [cluster.link(name) for name in self.agents]
        self._first = cluster.link(plan.stages[0].device)
        self._predicted_stages = tuple(s.predicted_compute_s + s.predicted_transfer_s
                                       for s in plan.stages)
        self._unloaded = False

    @property
    def strategy(self) -> str:
        return str(self.plan.strategy)

    def describe(self) -> str:
        stages = " → ".join(f"{s.device}[{s.node_start}:{s.node_end}]" for s in self.plan.stages)
        return (f"{self.plan.model_name} ({self.plan.strategy}): {stages}; predicted "
                f"{self.plan.predicted_latency_s * 1e3:.2f} ms")

    def _send(self, inputs: Mapping[str, Any]) -> tuple[int, float]:
        if self._unloaded:
            raise ConfigError(f"deployment {self.id} was unloaded; deploy the model again")
        arrays = check_inputs(self.signature, inputs)
        hub = self.cluster.hub
        request_id = hub.next_id()
        start = time.perf_counter()
        run = Run(deployment_id=self.specs[0].deployment_id, sent_at=time.time())
        hub.send(self._first, run.frame(request_id, tensors=arrays),
                 timeout_s=self.cluster.timeouts.hello_s)
        return request_id, start

    def _result(self, frame: Frame, start: float) -> Result:
        if frame.is_error:
            raise error_from_frame(frame, frame.sender or self.agents[0])
        agent = frame.sender or self.agents[0]
        if frame.kind != RESULT:
            raise AgentError(f"answered with an unexpected {frame.kind[:64]!r} frame", agent=agent)
        latency = time.perf_counter() - start
        result = parse_reply(RunResult, frame.meta, agent, RESULT)
        outputs = {name: np.array(value) for name, value in frame.tensors.items()}
        return Result(
            outputs=outputs, exit=result.exit, stage=result.stage,
            latency_s=latency, stages=result.timings,
            predicted_latency_s=float(self.plan.predicted_latency_s),
            predicted_stages=self._predicted_stages, request_id=frame.request_id,
        )

    def run(self, inputs: Mapping[str, Any], timeout_s: float | None = None) -> Result:
        """One inference. Raises `InputError` before sending anything if inputs do not match,
        `AgentUnavailableError` naming the agent if one dies or stays silent."""
        timeout = self.cluster.timeouts.request_s if timeout_s is None else timeout_s
        request_id, start = self._send(inputs)
        try:
            frame = self.cluster.hub.wait({request_id}, timeout, self._links, "result")
        except BaseException:
            self.cluster.hub.forget([request_id])
            raise
        return self._result(frame, start)

    def run_many(self, inputs: Iterable[Mapping[str, Any]], *,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 timeout_s: float | None = None) -> Iterator[Result]:
        """Stream `inputs` through the pipeline, at most `max_in_flight` at once.

        Yields results in input order. `timeout_s` bounds the wait for each result.
        On an error the remaining requests are abandoned and the error raised.
        """
        if max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be at least 1, got {max_in_flight}")
        timeout = self.cluster.timeouts.request_s if timeout_s is None else timeout_s
        hub = self.cluster.hub
        pending: deque[tuple[int, float]] = deque()
        source = iter(inputs)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < max_in_flight:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.append(self._send(item))
                if not pending:
                    return
                request_id, start = pending[0]
                frame = hub.wait({request_id}, timeout, self._links, "result")
                pending.popleft()
                yield self._result(frame, start)
        finally:
            hub.forget(request_id for request_id, _ in pending)

    def set_exit_thresholds(self, thresholds: Mapping[str, Any]) -> None:
        """Change early-exit thresholds while deployed: no new plan, shard or session.

        `thresholds`: exit name -> threshold under that exit's policy, None (never
        stop there), or `(policy, threshold)`. Only the agents holding those exits'
        stages are told (one `set_exit` message each); requests already running
        finish under the old rule. `plan` and `specs` are updated to match.
        """
        from partitioner.exit_policies import POLICIES

        if self._unloaded:
            raise ConfigError(f"deployment {self.id} was unloaded; deploy the model again")
        current = {e.name: e for e in self.plan.exits}
        earlier = sorted(name for name, e in current.items() if not e.final)
        wanted: dict[str, Any] = {}
        for name, value in thresholds.items():
            spec = current.get(name)
            if spec is None or spec.final:
                why = "is the final exit, which always answers" if spec else "is not an exit"
                raise ConfigError(f"{name!r} {why} of this deployment; set thresholds on "
                                  f"{earlier or 'its early exits (it has none)'}")
            if value is None:
                wanted[name] = None
                continue
            if isinstance(value, tuple) and len(value) != 2:
                raise ConfigError(f"exit {name!r}: give a threshold or (policy, threshold)")
            policy, threshold = value if isinstance(value, tuple) else (spec.policy, value)
            if policy not in POLICIES or not np.isfinite(_number(threshold, name)):
                raise ConfigError(f"exit {name!r}: need a finite threshold and a policy of "
                                  f"{POLICIES}, got ({policy!r}, {threshold!r})")
            wanted[name] = (str(policy), float(threshold))
        chosen = exit_thresholds(self.plan, wanted)
        plan = dataclasses.replace(self.plan, exits=tuple(
            dataclasses.replace(e, policy=chosen[e.name][0], threshold=chosen[e.name][1])
            for e in self.plan.exits))
        rules = exit_rules(plan, None)
        specs = list(self.specs)
        for index, (spec, stage) in enumerate(zip(self.specs, self.plan.stages, strict=True)):
            if stage.exit not in wanted:
                continue
            rule = rules.get(stage.exit)
            self.cluster.call(stage.device, SetExit(spec.deployment_id, rule), SetExitReply)
            specs[index] = dataclasses.replace(spec, exit=rule)
            log.info("%s: exit %s of stage %d on %s now %s", self.id, stage.exit, index,
                     stage.device, "off" if rule is None else f"{rule.policy} {rule.threshold:g}")
        self.plan, self.specs = plan, tuple(specs)

    def status(self) -> dict[str, Any]:
        """Each stage's status as its agent reports it."""
        table: dict[str, Any] = {}
        for spec, stage in zip(self.specs, self.plan.stages, strict=True):
            table[spec.deployment_id] = self.cluster.deployment_status(stage.device,
                                                                       spec.deployment_id)
        return table

    def unload(self) -> None:
        """Unload every stage from its agent (best effort for agents that are gone)."""
        if self._unloaded:
            return
        self._unloaded = True
        errors: list[str] = []
        for spec, stage in zip(self.specs, self.plan.stages, strict=True):
            try:
                self.cluster.call(stage.device, Unload(spec.deployment_id), UnloadReply)
            except Exception as error:  # keep unloading the others
                errors.append(str(error))
        if errors:
            log.warning("unload of %s incomplete: %s", self.id, "; ".join(errors))
