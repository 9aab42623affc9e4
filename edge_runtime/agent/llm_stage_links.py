"""Emulated links for an "llm-stage" deployment (benchmarks): its collectives and sends.

Why: the strategies benchmark must measure tensor, pipeline and hybrid layouts over
Wi-Fi-like links on one machine, and the kernel has no netem. A stage spec may ask
(`LlmStageSpec.emulate_delay_s`, `emulate_bandwidth`) for every message this agent
sends for the deployment to go through `transports.linkemu`: the group's collectives
(`CollectiveGroup(emulation=...)`) and the hidden states and answers it hands to the
agent's control loop (`DelayedSender`: each frame leaves when the emulated link
would have delivered it, in order, without holding up the stage's next step).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable, Sequence

from edge_runtime.agent.llm_group import ShardGroup
from transports.linkemu import LinkEmulator, LinkSpec, Outbox


def emulator(delay_s: float, bandwidth: float | None, seed: int = 0) -> LinkEmulator | None:
    """A link emulator for these figures; None when nothing is emulated."""
    if delay_s <= 0 and bandwidth is None:
        return None
    return LinkEmulator(default=LinkSpec(delay_s=delay_s, bandwidth_bytes_per_s=bandwidth),
                        seed=seed)


class EmulatedShardGroup(ShardGroup):
    """A share's group whose collectives go over emulated links once connected.

    The group is built and secured exactly as `ShardGroup` builds it; then its member
    sends through the emulator (`transports.group.GroupMember` holds its sends in an
    outbox until due). Until `transports` or `ShardGroup` take an emulator, this sets
    the two attributes `GroupMember.__init__` sets from its `emulation` argument."""

    def __init__(self, base: ShardGroup, emulation: LinkEmulator) -> None:
        # the group as the share built it (not listening yet), whatever its constructor
        self.__dict__.update(base.__dict__)
        self._emulation = emulation
        # the emulator holds a ZeroMQ group's sends in its outbox; plain TCP links
        # (`transports.groupstream`) take none, so an emulated group keeps ZeroMQ sockets
        self._tcp = False

    def connect(self, endpoints: Sequence[str]) -> None:
        super().connect(endpoints)
        group = self.group
        if group is not None:
            group._emulation = self._emulation
            group._outbox = self._outbox = Outbox(self._emulation.clock)

    def drain(self) -> None:
        """Deliver what the group still holds at the end of a step: a member's last send
        (its part of the logits gather) would otherwise wait for its next collective."""
        outbox = getattr(self, "_outbox", None)
        if outbox is not None:
            outbox.drain(self._emulation.clock() + 60.0)


class DelayedSender:
    """Runs each send when its emulated link delivers it (one thread, in due order)."""

    def __init__(self, emulation: LinkEmulator) -> None:
        self._emulation = emulation
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="llm-stage-link", daemon=True)
        self._thread.start()

    def send(self, peer: str, nbytes: int, action: Callable[[], None]) -> None:
        """Run `action` (a send) once `nbytes` would have crossed the link to `peer`."""
        due = self._emulation.schedule(peer, nbytes)
        if due is None:
            return  # lost on the emulated link
        with self._cv:
            heapq.heappush(self._heap, (due, next(self._order), action))
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closed and (
                        not self._heap or self._heap[0][0] > self._emulation.clock()):
                    wait = (None if not self._heap
                            else max(0.0, self._heap[0][0] - self._emulation.clock()))
                    self._cv.wait(wait)
                if self._closed:
                    return
                _, _, action = heapq.heappop(self._heap)
            action()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(1.0)


def frame_bytes(tensors: dict[str, object]) -> int:
    """The bytes of a frame's tensors (what an emulated link serialises), plus a header."""
    return 256 + sum(int(getattr(t, "nbytes", 0)) for t in tensors.values())


__all__ = ["DelayedSender", "EmulatedShardGroup", "emulator", "frame_bytes"]
