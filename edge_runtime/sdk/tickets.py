"""`Ticket`: one request's life in the coordinator, and `Ledger`: its journal entries.

A ticket is made when the app hands a request to the SDK and lives until its answer
(or final error) is handed back. It keeps the request's inputs, so a failover can
send it again from them (each attempt has its own wire id; answers to an abandoned
attempt are dropped by the hub, so nothing is answered twice), its deadline, and its
key. With a journal, the ledger writes the entry before the first attempt and marks it
delivered just before the result is handed to the caller; an entry that was not
delivered (the app crashed, or the cluster stayed away) is found by `Cluster.resume()`.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.errors import DeadlineError
from edge_runtime.llm.engine import Generation
from edge_runtime.sdk.journal import Journal
from edge_runtime.sdk.journal_codec import encode_generation, encode_result
from edge_runtime.sdk.result import Result


@dataclass
class Ticket:
    """One request in flight: its inputs (to send again), deadline, attempts."""

    key: str
    arrays: dict[str, np.ndarray]
    deadline: float | None  # time.monotonic() past which it fails with DeadlineError
    request_id: int | None = None  # the current attempt's wire id (None: not sent)
    started: float = field(default_factory=time.perf_counter)  # handed to the SDK
    attempts: int = 0
    notes: list[str] = field(default_factory=list)

    def left_s(self, cap: float) -> float:
        """Seconds this ticket may still wait, at most `cap`; DeadlineError when none."""
        if self.deadline is None:
            return cap
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineError(f"request {self.key or self.request_id} passed its deadline "
                                f"after {self.attempts} attempt(s)"
                                + (f" ({'; '.join(self.notes)})" if self.notes else ""))
        return min(cap, left)


_KEY_PREFIX = os.urandom(8).hex()
_KEY_COUNTER = itertools.count(1)


def _new_prefix() -> None:
    """A forked child draws its own prefix, or it would repeat its parent's keys."""
    global _KEY_PREFIX, _KEY_COUNTER
    _KEY_PREFIX, _KEY_COUNTER = os.urandom(8).hex(), itertools.count(1)


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_new_prefix)


def new_key() -> str:
    """A request key unique to this process and, by its random prefix, across processes:
    32 hex characters like a uuid4's, without a system call and an object per request
    (only used when there is no journal; a journal makes its own keys)."""
    return f"{_KEY_PREFIX}{next(_KEY_COUNTER):016x}"


class Ledger:
    """The journal entries of one deployment's requests (nothing to do without a journal)."""

    def __init__(self, journal: Journal | None, model_key: str, kind: str) -> None:
        self.journal = journal
        self.model_key = model_key
        self.kind = kind

    def open(self, arrays: Mapping[str, np.ndarray], key: str | None,
             deadline_s: float | None, request: bytes = b"") -> Ticket:
        """A ticket for a new request, journaled first when there is a journal."""
        if key is None:
            key = self.journal.new_key() if self.journal is not None else new_key()
        if self.journal is not None:
            self.journal.add(key, self.model_key, self.kind, request, arrays)
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        return Ticket(key, dict(arrays), deadline)

    def reopen(self, key: str, arrays: Mapping[str, np.ndarray],
               deadline_s: float | None) -> Ticket:
        """A ticket for a journaled request being resumed (its entry already exists)."""
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        return Ticket(key, dict(arrays), deadline)

    def attempt(self, ticket: Ticket) -> None:
        ticket.attempts += 1
        if self.journal is not None:
            self.journal.attempt(ticket.key)

    def deliver(self, ticket: Ticket, result: Result) -> None:
        """Store the answer, then mark it handed over: call just before handing it."""
        if self.journal is None:
            return
        meta, arrays = encode_result(result)
        self.journal.answered(ticket.key, result.served_by, meta, arrays)
        self.journal.delivered(ticket.key)

    def deliver_generation(self, ticket: Ticket, generation: Generation) -> None:
        """As `deliver`, for an LLM generation (just before its last token is handed)."""
        if self.journal is None:
            return
        self.journal.answered(ticket.key, generation.served_by, encode_generation(generation),
                              {})
        self.journal.delivered(ticket.key)

    def fail(self, ticket: Ticket, error: BaseException) -> None:
        """A final error (bad input, deadline): the entry is done, with its reason."""
        if self.journal is not None:
            self.journal.failed(ticket.key, f"{type(error).__name__}: {error}")


__all__ = ["Ledger", "Ticket", "new_key"]
