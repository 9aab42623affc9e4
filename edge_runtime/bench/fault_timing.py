"""One injected fault and the figures of the stream around it (`bench faults`).

Why apart from the suite (`faults.py`): the suite runs workloads (a pipeline's
`run_many`, an LLM's generations) and checks what they answered; this module is the
part both share — a fault armed on a timer thread so it lands wherever the stream then
is, the moment the stream resumes, and the detection, recovery and throughput figures
taken from the result times.

How each figure is taken (all on `time.monotonic()`):

- detect: from the signal to the moment the coordinator marked the victim lost — the
  loss time `cluster.health` records (`Health.lost` stamps it with the same clock when the
  deployment's failover calls `cluster.lost`); "-" when the victim was never marked;
- recover: from that mark to the first result (token, for the LLM) handed to the app
  after the failover: re-plan over the survivors, deploy what their caches lack, re-send
  what was in flight (replay the sequence so far, for the LLM), and its answer;
- throughput (requests/s or tokens/s as the app receives them): before = stream start to
  the signal; during = the window containing the fault, from the signal to `--window-s`
  later (default heartbeat timeout + 2 s) or to the first result after recovery if that
  is later, so it holds the whole outage; after = the rest of the stream;
- max gap after: the longest pause between two results after the failover (it shows the
  coordinator knocking on the lost agent between requests, see docs/RESILIENCE.md).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

GIVE_UP_S = 60.0  # a stream that has not resumed this long after the window ends anyway


@dataclasses.dataclass
class Fault:
    """One injected fault: what, to whom, when."""

    kind: str
    victim: str
    signalled_at: float = math.nan
    resumed_at: float | None = None  # the first result received after the victim was marked
    _timer: threading.Timer = dataclasses.field(init=False, repr=False)

    def inject(self, cluster: Any) -> None:
        proc = next(p for p in cluster.processes if p.name == self.victim)
        self.signalled_at = time.monotonic()
        if self.kind == "stop":
            proc.process.send_signal(signal.SIGSTOP)
        else:
            proc.process.send_signal(signal.SIGKILL)

    def received(self, cluster: Any, now: float) -> None:
        """A result arrived at `now`: the first one after the victim was marked lost is the
        stream resuming."""
        if (self.resumed_at is None and not math.isnan(self.signalled_at)
                and detected_at(cluster, self) is not None):
            self.resumed_at = now

    def window_end(self, window_s: float) -> float:
        """The end of the window containing the fault: `window_s` after the signal, or the
        stream resuming if that is later (so the window holds the whole outage)."""
        return max(self.signalled_at + window_s, self.resumed_at or -math.inf)

    def over(self, phase_s: float, window_s: float) -> bool:
        """Whether the stream ran `phase_s` past the window (or past `GIVE_UP_S` without
        resuming), so it may end; False before the fault."""
        end = (self.window_end(window_s) if self.resumed_at is not None
               else self.signalled_at + window_s + GIVE_UP_S)
        return time.monotonic() >= end + phase_s  # False while signalled_at is NaN

    def arm(self, cluster: Any, after_s: float) -> float:
        """Inject the fault `after_s` from now, from a timer thread, so it lands wherever
        the stream then is — mostly while the coordinator waits on the agents (mid-request,
        mid-step), as a real fault does; the app's thread is never the one to signal.
        Returns now (the stream's start)."""
        self._timer = threading.Timer(after_s, self.inject, args=(cluster,))
        self._timer.daemon = True
        started = time.monotonic()
        self._timer.start()
        return started

    def disarm(self, cluster: Any) -> None:
        """Cancel a fault not yet injected; SIGKILL the victim of one that was (a stopped
        agent would ignore teardown's SIGTERM for its whole grace period)."""
        self._timer.cancel()
        self._timer.join()
        if not math.isnan(self.signalled_at):
            next(p for p in cluster.processes if p.name == self.victim).kill()


def detected_at(cluster: Any, fault: Fault) -> float | None:
    """When the coordinator marked the victim lost (Health's loss stamp), if it did."""
    losses = cluster.health.record(fault.victim).losses
    after = [t for t in losses if t >= fault.signalled_at]
    return after[0] if after else None


def rate(times: Sequence[float], start: float, end: float) -> float | None:
    """Results (or tokens) received in [start, end) per second; None for an empty window."""
    if end - start <= 1e-6:
        return None
    count = sum(1 for t in times if start <= t < end)
    return count / (end - start)


def stream_timing(cluster: Any, fault: Fault, started: float, times: list[float],
            window_s: float) -> dict[str, Any]:
    if math.isnan(fault.signalled_at):  # the stream ended before the fault was due
        return {"victim": fault.victim, "fault_injected": False,
                "marked_lost": cluster.health.down(), "detect_s": None, "recover_s": None,
                "outage_s": None, "max_gap_after_s": None,
                "throughput": {"before": rate(times, started, times[-1] + 1e-9)
                               if times else None, "during": None, "after": None}}
    detected = detected_at(cluster, fault)
    first = fault.resumed_at
    end = times[-1] if times else started
    window_end = fault.window_end(window_s)
    after = [t for t in times if first is not None and t >= first]
    return {
        "victim": fault.victim, "fault_injected": True,
        "marked_lost": cluster.health.down(),
        "detect_s": None if detected is None else detected - fault.signalled_at,
        "recover_s": None if detected is None or first is None else first - detected,
        "outage_s": None if first is None else first - fault.signalled_at,
        "throughput": {
            "before": rate(times, started, fault.signalled_at),
            "during": rate(times, fault.signalled_at, min(window_end, end + 1e-9)),
            "after": rate(times, window_end, end + 1e-9) if end > window_end else None,
        },
        "max_gap_after_s": max((b - a for a, b in itertools.pairwise(after)),
                               default=None),
    }


__all__ = ["GIVE_UP_S", "Fault", "detected_at", "rate", "stream_timing"]
