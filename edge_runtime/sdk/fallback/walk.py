"""Walking a pipeline request down the fallback targets once the cluster cannot answer.

Each target is tried in the chain's order within the request's deadline; the first
answer becomes the request's `Result` (saying who served it and whether it is
degraded); when none answers, `ClusterUnavailableError` lists every path and why.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from edge_runtime.errors import ClusterUnavailableError, FallbackError
from edge_runtime.sdk.fallback.targets import ModelInfo, PipelineFallback
from edge_runtime.sdk.result import Result
from edge_runtime.sdk.tickets import Ticket


def answer_elsewhere(targets: Sequence[PipelineFallback], model: ModelInfo, head: Ticket,
                     request_s: float, why_away: str, journaled: bool) -> Result:
    """The first target's answer to `head`, or the error naming every path tried."""
    reasons = [f"cluster: {why_away or 'not in the chain'}"]
    started = time.perf_counter()
    for target in targets:
        try:
            answer = target.infer(model, head.arrays, head.left_s(request_s))
        except FallbackError as error:
            reasons.append(str(error))
            continue
        return Result(outputs=answer.outputs, exit=answer.exit, stage=-1,
                      latency_s=time.perf_counter() - started,
                      request_id=head.request_id or 0, served_by=answer.served_by,
                      degraded=answer.degraded, attempts=head.attempts + 1,
                      key=head.key, notes=(*head.notes, *answer.notes))
    kept = (f"; it stays in the journal as {head.key} for Cluster.resume()"
            if journaled else "")
    raise ClusterUnavailableError(f"no path could answer the request: {'; '.join(reasons)}"
                                  f"{kept}")


__all__ = ["answer_elsewhere"]
