"""Reclaiming what a coordinator left behind when its lease lapsed.

The lease table (`sessions.py`) only keeps the books; this is the part that acts on
them, a few times a second from the control loop: each lapsed session's deployments are
taken out of the agent and closed on a lane of their own (never refused, and never
queued behind other coordinators' deploys), and the keys the session introduced are
revoked, so its peers are refused new connections from then on.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

from edge_runtime.agent.deployments import Deployment, unload
from edge_runtime.agent.lanes import Lane
from edge_runtime.agent.sessions import Sessions

log = logging.getLogger(__name__)


class LeaseReaper:
    """Unloads the deployments of lapsed sessions and revokes the keys they introduced."""

    def __init__(self, sessions: Sessions, take: Callable[[str], Deployment | None],
                 revoke: Callable[[str], None], sweep_s: float) -> None:
        """`take(id)` removes a deployment from the agent (None: already gone);
        `revoke(key)` undoes one admission of a key; sweeps run at most every `sweep_s`."""
        self._sessions = sessions
        self._take = take
        self._revoke = revoke
        self._sweep_s = sweep_s
        self._next_sweep = 0.0
        self._lane = Lane("reclaims")

    def sweep(self) -> None:
        """Act on every session whose lease has lapsed since the last sweep (cheap when due
        only every `sweep_s`, so the loop may call it on every turn)."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._sweep_s
        for lapsed in self._sessions.lapsed():
            log.warning("coordinator session %s silent for %.1f s: its lease lapsed; unloading "
                        "%s and revoking %d key(s) it introduced", lapsed.session_id,
                        lapsed.silent_s, ", ".join(lapsed.deployment_ids) or "nothing",
                        len(lapsed.keys))
            for key in lapsed.keys:
                self._revoke(key)
            for deployment_id in lapsed.deployment_ids:
                deployment = self._take(deployment_id)
                if deployment is not None:
                    self._lane.submit(functools.partial(unload, deployment_id, deployment))

    def close(self) -> None:
        self._lane.close()


__all__ = ["LeaseReaper"]
