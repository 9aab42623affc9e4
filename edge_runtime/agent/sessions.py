"""Coordinator sessions and their leases: who owns each deployment, and for how long.

Why leases: a coordinator is an app on a laptop or phone; it can crash, be
SIGSTOPped, sleep with its lid closed or walk out of Wi-Fi range. Without a lease its
deployments would stay on the agent forever, holding memory against
`--memory-budget` and the keys it introduced, until someone unloads them by hand.
With one, every deployment belongs to the session that deployed it; the session's
coordinator renews the lease (`renew`, a few times per lease), and when it lapses
the agent unloads that session's deployments, revokes the keys it introduced and
remembers why, so a coordinator that comes back is told its deployment is gone
instead of "no such deployment".

This module only keeps the books (thread-safe: handlers run on worker threads);
the daemon sweeps it and does the unloading (`Agent._sweep_leases`).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

MAX_SESSIONS = 256
"""Sessions an agent tracks at once. Each is a few hundred bytes, but hellos are cheap to
send: past this, the least recently renewed session that owns nothing is forgotten."""

MAX_GONE = 1024
"""Unloaded deployments whose reason is remembered (a bounded record, oldest dropped)."""


@dataclass(frozen=True)
class LeaseLimits:
    """The lease lengths an agent grants, whatever a coordinator asks for."""

    default_s: float = 30.0
    min_s: float = 1.0
    max_s: float = 3600.0

    def clamp(self, requested_s: float | None) -> float:
        wanted = self.default_s if requested_s is None else requested_s
        return min(self.max_s, max(self.min_s, wanted))


class SessionLapsed(Exception):
    """A session's lease lapsed while a request of it was being served (a slow deploy)."""


@dataclass
class Session:
    """One coordinator session as the agent sees it. `generation` tells a session from a
    later one with the same id (a coordinator that came back after its lease lapsed)."""

    session_id: str
    lease_s: float
    renewed_at: float
    generation: int
    deployments: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)

    def expires_at(self) -> float:
        return self.renewed_at + self.lease_s


@dataclass(frozen=True)
class Lapsed:
    """A session whose lease ran out: what the daemon must unload and revoke."""

    session_id: str
    silent_s: float
    deployment_ids: tuple[str, ...]
    keys: tuple[str, ...]


class Sessions:
    """The lease table of one agent."""

    def __init__(self, limits: LeaseLimits, agent_name: str,
                 allow: Callable[[str], None] = lambda key: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`allow`: admits a CURVE key at run time (the agent's authorizer); called once
        per key per session by `introduce`, and undone by the daemon when it lapses."""
        self.limits = limits
        self._agent = agent_name
        self._allow = allow
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._owner: dict[str, str] = {}  # deployment id -> session id
        self._gone: OrderedDict[str, str] = OrderedDict()  # deployment id -> why
        self._generations = itertools.count(1)

    def touch(self, session: str, lease_s: float | None = None) -> int:
        """Create or renew `session`'s lease (`lease_s` given: also set its length);
        returns its generation, for `adopt` at the end of a slow deploy."""
        with self._lock:
            return self._touch(session, lease_s).generation

    def _touch(self, session: str, lease_s: float | None) -> Session:
        now = self._clock()
        found = self._sessions.get(session)
        if found is None:
            found = Session(session, self.limits.clamp(lease_s), now, next(self._generations))
            self._evict_idle()
            self._sessions[session] = found
        else:
            if lease_s is not None:
                found.lease_s = self.limits.clamp(lease_s)
            found.renewed_at = now
            self._sessions.move_to_end(session)
        return found

    def _evict_idle(self) -> None:
        while len(self._sessions) >= MAX_SESSIONS:
            idle = next((s for s in self._sessions.values()
                         if not s.deployments and not s.keys), None)
            if idle is None:
                return  # every session owns something: they lapse on their own
            del self._sessions[idle.session_id]

    def renew(self, session: str, deployment_ids: Sequence[str],
              lease_s: float | None = None) -> list[tuple[str, str]]:
        """Renew `session`'s lease (re-creating it with `lease_s` if it lapsed or the agent
        restarted); (deployment id, reason) for each of `deployment_ids` that is no longer
        here, so the coordinator learns what it lost."""
        with self._lock:
            owned = self._touch(session, lease_s).deployments
            gone: list[tuple[str, str]] = []
            for deployment_id in deployment_ids:
                if deployment_id in owned:
                    continue
                reason = self._gone.get(deployment_id) or (
                    f"agent {self._agent} has no deployment {deployment_id} (the agent "
                    "restarted, or another session holds that id)")
                gone.append((deployment_id, reason))
            return gone

    def adopt(self, session: str, deployment_id: str, generation: int | None = None) -> None:
        """Record that `session` owns the deployment it just deployed (renews its lease).

        With `generation` (from `touch` when the deploy began): SessionLapsed if the
        session lapsed meanwhile — its keys are revoked, so the caller must unload."""
        with self._lock:
            found = self._sessions.get(session)
            if generation is not None and (found is None or found.generation != generation):
                raise SessionLapsed(f"session {session}'s lease lapsed during the deploy of "
                                    f"{deployment_id}")
            self._touch(session, None).deployments.add(deployment_id)
            self._owner[deployment_id] = session
            self._gone.pop(deployment_id, None)

    def introduce(self, session: str, public_keys: Iterable[str]) -> None:
        """Admit keys `session` vouches for (peers of its deployments), once per session:
        a repeated join allows nothing twice, so the lapse revokes exactly what it added."""
        with self._lock:
            held = self._touch(session, None).keys
            fresh = [key for key in dict.fromkeys(public_keys) if key and key not in held]
            for key in fresh:
                self._allow(key)
                held.add(key)

    def release(self, deployment_id: str) -> None:
        """An explicit unload: the deployment leaves its session (no reason kept)."""
        with self._lock:
            owner = self._owner.pop(deployment_id, None)
            if owner is not None and owner in self._sessions:
                self._sessions[owner].deployments.discard(deployment_id)

    def gone_reason(self, deployment_id: str) -> str | None:
        with self._lock:
            return self._gone.get(deployment_id)

    def lapsed(self) -> list[Lapsed]:
        """Remove and return every session whose lease has run out.

        Its deployments get a remembered reason at once, so a request racing with the
        unload is answered "gone (lease lapsed)" rather than "unknown deployment".
        """
        now = self._clock()
        ended: list[Lapsed] = []
        with self._lock:
            for session in list(self._sessions.values()):
                if now < session.expires_at():
                    continue
                del self._sessions[session.session_id]
                silent = now - session.renewed_at
                for deployment_id in session.deployments:
                    self._owner.pop(deployment_id, None)
                    self._remember(deployment_id, (
                        f"deployment {deployment_id} on agent {self._agent} was unloaded after "
                        f"its coordinator's lease lapsed (silent for {silent:.1f} s, lease "
                        f"{session.lease_s:g} s)"))
                ended.append(Lapsed(session.session_id, silent,
                                    tuple(sorted(session.deployments)), tuple(session.keys)))
        return ended

    def _remember(self, deployment_id: str, reason: str) -> None:
        self._gone[deployment_id] = reason
        self._gone.move_to_end(deployment_id)
        while len(self._gone) > MAX_GONE:
            self._gone.popitem(last=False)

    def lease_of(self, deployment_id: str) -> tuple[str, float] | None:
        """(owning session, seconds until its lease lapses) of a deployment, for `status`."""
        now = self._clock()
        with self._lock:
            owner = self._owner.get(deployment_id)
            session = self._sessions.get(owner) if owner is not None else None
            if session is None:
                return None
            return session.session_id, round(session.expires_at() - now, 3)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)


__all__ = ["MAX_GONE", "MAX_SESSIONS", "Lapsed", "LeaseLimits", "Session", "SessionLapsed",
           "Sessions"]
