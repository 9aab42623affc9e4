"""`Journal`: the coordinator's request journal, so a crashed app loses no request.

Why: an app that crashes (or is killed, or loses power) mid-request has accepted
work its caller may still wait for. When asked, the coordinator writes each request
here before sending it, the answer when it comes and the hand-over to the caller;
a new process (`Cluster.resume()`) reads back what is unfinished and completes it,
and every request key is answered once.

One SQLite file in WAL mode with `synchronous=FULL`: a commit that returned survives
a crash or a power loss, and a write cut short leaves nothing. Inputs are stored
inline; inputs larger than `JournalLimits.max_inline_bytes` go to a side file
`<journal>.inputs/<key>.npz`. The files are `journal_files.py`'s (it says how a row
and its side file stay in step through a crash); this module is the state machine.

An entry's life: PENDING (accepted) → ANSWERED (result stored) → DELIVERED (handed
to the caller), or → FAILED (a final error handed to the caller) from either of the
first two. Every transition is checked. A finished entry's inputs are dropped in the
transaction that finishes it (only PENDING entries are ever run again), its side file
deleted right after, so the journal's size is bounded by its unfinished entries plus
small records of finished ones. Those records (key, state, result) are kept
`max_age_s` after they finished, so a reused key is still refused, then pruned.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from edge_runtime.errors import ConfigError, DuplicateRequestError, JournalError, JournalFullError
from edge_runtime.sdk.journal_codec import LazyArrays, decode_arrays, encode_arrays
from edge_runtime.sdk.journal_files import SideFiles, open_database, open_error, transaction

log = logging.getLogger(__name__)

KINDS = ("pipeline", "llm")
_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
"""A key names a side file, so it is a plain file name."""
_NO_INPUTS = "inputs = NULL, inputs_ref = NULL, inputs_sha256 = NULL"
"""What finishing an entry sets: its inputs are never needed again."""


class EntryState(enum.StrEnum):
    PENDING = "pending"  # accepted, no answer yet
    ANSWERED = "answered"  # result stored, not yet handed to the caller
    DELIVERED = "delivered"  # handed to the caller (done)
    FAILED = "failed"  # a final error was handed to the caller (done)


UNFINISHED = (EntryState.PENDING.value, EntryState.ANSWERED.value)
FINISHED = (EntryState.DELIVERED.value, EntryState.FAILED.value)


@dataclass(frozen=True)
class JournalLimits:
    """How much a journal holds.

    `max_unfinished`: PENDING + ANSWERED entries at most; `add` beyond it raises
    JournalFullError (a cluster down for long must not fill the disk).
    `max_age_s`: finished entries are pruned this long after they finished (on open
    and on add); unfinished entries this old are marked FAILED ("expired") on open.
    `max_inline_bytes`: inputs larger than this (encoded) go to a side file.
    """

    max_unfinished: int = 10_000
    max_age_s: float = 7 * 86400
    max_inline_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.max_unfinished < 1 or self.max_age_s <= 0 or self.max_inline_bytes < 0:
            raise ConfigError(f"invalid {self}: max_unfinished must be ≥ 1, max_age_s > 0 "
                              "and max_inline_bytes ≥ 0")


@dataclass(frozen=True, eq=False)
class JournalEntry:
    """One journaled request as last committed (arrays are not comparable, hence eq=False).

    A finished entry (DELIVERED or FAILED) has empty `inputs` and no `inputs_ref`: they
    are dropped when it finishes, since only PENDING entries are run again. Its
    `request`, `result` and `result_arrays` are kept until it is pruned.
    """

    key: str
    deployment: str  # the model's identity: sha256 of the ONNX file or the LLM checkpoint
    kind: str  # "pipeline" | "llm"
    state: EntryState
    attempts: int
    created: float  # unix time
    updated: float
    request: bytes  # opaque msgpack the caller made
    inputs: Mapping[str, np.ndarray]  # loaded on first access; empty for llm and finished
    inputs_ref: str | None  # path of the side file when inputs were too large to inline
    served_by: str | None
    result: bytes | None  # opaque msgpack
    result_arrays: Mapping[str, np.ndarray]  # loaded on first access
    error: str | None

    @property
    def finished(self) -> bool:
        return self.state.value in FINISHED


class Journal:
    """The request journal at `path` (created with its directories if missing).

    One SQLite connection, shared by threads under a lock; every write is one
    `BEGIN IMMEDIATE` transaction. Several processes may open the same file (a
    `resume()` while the crashed app's successor runs): SQLite serialises their writes.
    `clock` (unix seconds) is for tests of aging.
    """

    def __init__(self, path: str | os.PathLike[str], limits: JournalLimits = JournalLimits(),
                 *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path).expanduser()
        self.limits = limits
        self._clock = clock
        self._files = SideFiles(self.path.with_name(self.path.name + ".inputs"))
        self._lock = threading.Lock()
        conn = open_database(self.path)
        self._conn: sqlite3.Connection | None = conn
        try:
            self._maintain()
        except BaseException:
            self._conn = None
            conn.close()
            raise

    # --- public API ---------------------------------------------------------------------

    def new_key(self) -> str:
        return uuid.uuid4().hex

    def add(self, key: str, deployment: str, kind: str, request: bytes,
            inputs: Mapping[str, np.ndarray] | None = None) -> None:
        """Journal a new PENDING request. DuplicateRequestError if `key` was used;
        JournalFullError at `max_unfinished` unfinished entries."""
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise JournalError(f"request key {key!r:.80} is not valid: use 1-128 letters, digits, "
                               "'_', '-' or '.' (Journal.new_key() makes one)")
        if kind not in KINDS:
            raise JournalError(f"entry kind {kind!r:.40} is not one of {KINDS}")
        blob = encode_arrays(inputs) if inputs else None
        side = blob is not None and len(blob) > self.limits.max_inline_bytes
        pruned: list[str] = []
        with self._write() as conn:
            existing = conn.execute("SELECT state FROM entries WHERE key = ?", (key,)).fetchone()
            if existing is not None:
                raise DuplicateRequestError(
                    f"request key {key!r} was already used (its entry is {existing[0]}); each "
                    "key is answered once: use a new key (Journal.new_key())")
            unfinished = conn.execute(
                "SELECT COUNT(*) FROM entries WHERE state IN (?, ?)", UNFINISHED).fetchone()[0]
            if unfinished >= self.limits.max_unfinished:
                raise JournalFullError(
                    f"the request journal {self.path} holds {unfinished} unfinished requests "
                    f"(JournalLimits.max_unfinished={self.limits.max_unfinished}): call "
                    "cluster.resume() to finish them, or raise the limit")
            now = self._clock()
            pruned = self._prune(conn, now)
            ref = digest = None
            if side:
                assert blob is not None
                ref, digest = self._files.write(key, blob)
            try:
                conn.execute(
                    "INSERT INTO entries (key, deployment, kind, state, attempts, created, "
                    "updated, request, inputs, inputs_ref, inputs_sha256) "
                    "VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?)",
                    (key, deployment, kind, EntryState.PENDING.value, now, now, bytes(request),
                     None if side else blob, ref, digest))
            except BaseException:
                if ref is not None:
                    self._files.discard(ref)
                raise
        self._sweep_committed(pruned)

    def attempt(self, key: str) -> int:
        """Count one more try to serve a PENDING entry; the new count."""
        with self._write() as conn:
            self._state(conn, key, "attempt", (EntryState.PENDING,))
            conn.execute("UPDATE entries SET attempts = attempts + 1, updated = ? WHERE key = ?",
                         (self._clock(), key))
            count: int = conn.execute("SELECT attempts FROM entries WHERE key = ?",
                                      (key,)).fetchone()[0]
            return count

    def answered(self, key: str, served_by: str, result: bytes,
                 result_arrays: Mapping[str, np.ndarray]) -> None:
        """Store the answer of a PENDING entry. A second answer is refused with
        DuplicateRequestError and the first is kept."""
        arrays = encode_arrays(result_arrays) if result_arrays else None
        with self._write() as conn:
            self._state(conn, key, "answered", (EntryState.PENDING,),
                        duplicate=(EntryState.ANSWERED, EntryState.DELIVERED))
            conn.execute(
                "UPDATE entries SET state = ?, served_by = ?, result = ?, result_arrays = ?, "
                "updated = ? WHERE key = ?",
                (EntryState.ANSWERED.value, served_by, bytes(result), arrays, self._clock(), key))

    def delivered(self, key: str) -> None:
        """An ANSWERED entry's result was handed to the caller: done (its inputs dropped)."""
        self._finish(key, "delivered", EntryState.DELIVERED, (EntryState.ANSWERED,), None)

    def failed(self, key: str, error: str) -> None:
        """A final error was handed to the caller of an unfinished entry: done (its inputs
        dropped)."""
        self._finish(key, "failed", EntryState.FAILED,
                     (EntryState.PENDING, EntryState.ANSWERED), error)

    def get(self, key: str) -> JournalEntry | None:
        with self._lock:
            row = self._open().execute("SELECT * FROM entries WHERE key = ?", (key,)).fetchone()
        return None if row is None else self._entry(row)

    def unfinished(self, deployment: str | None = None) -> list[JournalEntry]:
        """PENDING and ANSWERED entries (of one deployment, or all), oldest first."""
        query = "SELECT * FROM entries WHERE state IN (?, ?)"
        params: tuple[str, ...] = UNFINISHED
        if deployment is not None:
            query += " AND deployment = ?"
            params = (*UNFINISHED, deployment)
        with self._lock:
            rows = self._open().execute(query + " ORDER BY created, rowid", params).fetchall()
        return [self._entry(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Entries by state (every state, zeros included)."""
        with self._lock:
            rows = self._open().execute(
                "SELECT state, COUNT(*) FROM entries GROUP BY state").fetchall()
        counts = {state.value: 0 for state in EntryState}
        counts.update({state: n for state, n in rows})
        return counts

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    # --- transitions --------------------------------------------------------------------

    def _finish(self, key: str, action: str, to: EntryState, allowed: tuple[EntryState, ...],
                error: str | None) -> None:
        """Move an entry to DELIVERED or FAILED and drop its inputs in one transaction;
        delete its side file once that committed."""
        with self._write() as conn:
            self._state(conn, key, action, allowed)
            ref = conn.execute("SELECT inputs_ref FROM entries WHERE key = ?",
                               (key,)).fetchone()[0]
            conn.execute(f"UPDATE entries SET state = ?, error = COALESCE(?, error), "
                         f"updated = ?, {_NO_INPUTS} WHERE key = ?",
                         (to.value, error, self._clock(), key))
        self._sweep_committed([] if ref is None else [ref])

    def _state(self, conn: sqlite3.Connection, key: str, action: str,
               allowed: tuple[EntryState, ...],
               duplicate: tuple[EntryState, ...] = ()) -> EntryState:
        row = conn.execute("SELECT state FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise JournalError(f"{action}({key!r}): the journal {self.path} has no entry with "
                               "this key (never added, or pruned after max_age_s)")
        state = EntryState(row[0])
        if state in duplicate:
            raise DuplicateRequestError(
                f"{action}({key!r}): the entry is already {state.value}; its first answer is "
                "kept and each key is answered once")
        if state not in allowed:
            raise JournalError(
                f"{action}({key!r}): the entry is {state.value}, and {action} needs it "
                f"{' or '.join(s.value for s in allowed)}")
        return state

    # --- storage ------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError(f"the request journal {self.path} is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (`journal_files.transaction`) under the threads' lock."""
        with self._lock, transaction(self._open(), self.path) as conn:
            yield conn

    def _maintain(self) -> None:
        """On open: expire old unfinished entries, prune old finished ones, drop the inputs
        of finished ones (the expired, and any a journal written before inputs were
        dropped still holds), and delete side files no row names (left by a crash
        between writing a file and committing its row, or between finishing an entry
        and deleting its file)."""
        now = self._clock()
        with self._write() as conn:
            conn.execute(
                "UPDATE entries SET state = ?, error = ?, updated = ? "
                "WHERE state IN (?, ?) AND created < ?",
                (EntryState.FAILED.value,
                 f"expired: not finished within max_age_s={self.limits.max_age_s:g} s",
                 now, *UNFINISHED, now - self.limits.max_age_s))
            self._prune(conn, now)
            conn.execute(f"UPDATE entries SET {_NO_INPUTS} WHERE state IN (?, ?) AND "
                         "(inputs IS NOT NULL OR inputs_ref IS NOT NULL)", FINISHED)
        try:
            names = self._files.names()
        except OSError as error:
            raise open_error(self.path, error) from error
        self._sweep(names)

    def _prune(self, conn: sqlite3.Connection, now: float) -> list[str]:
        """Delete finished entries past max_age_s (inside the caller's transaction); the
        side files they named, to `_sweep` once that transaction committed."""
        cutoff = now - self.limits.max_age_s
        refs = [ref for (ref,) in conn.execute(
            "SELECT inputs_ref FROM entries WHERE state IN (?, ?) AND updated < ? "
            "AND inputs_ref IS NOT NULL", (*FINISHED, cutoff))]
        deleted = conn.execute("DELETE FROM entries WHERE state IN (?, ?) AND updated < ?",
                               (*FINISHED, cutoff)).rowcount
        if deleted:
            log.info("request journal %s: pruned %d finished entries", self.path, deleted)
        return refs

    def _sweep(self, names: list[str]) -> None:
        """Delete those side files that no committed row names, holding the write lock so
        no other writer is between writing a side file and committing its row."""
        if not names:
            return
        with self._write() as conn:
            self._files.sweep(names, lambda name: conn.execute(
                "SELECT 1 FROM entries WHERE inputs_ref = ?", (name,)).fetchone() is not None)

    def _sweep_committed(self, names: list[str]) -> None:
        """`_sweep` after a commit that stopped naming `names`: a failure here is logged,
        not raised (the commit stands; the next open sweeps)."""
        try:
            self._sweep(names)
        except JournalError as error:
            log.warning("request journal %s: side files not deleted yet: %s", self.path, error)

    def _entry(self, row: sqlite3.Row) -> JournalEntry:
        key: str = row["key"]
        inputs: Mapping[str, np.ndarray] = {}
        ref_path: Path | None = None
        if row["inputs"] is not None:
            blob: bytes = row["inputs"]
            inputs = LazyArrays(lambda: decode_arrays(blob, f"inputs of request {key!r}"))
        elif row["inputs_ref"] is not None:
            ref_path = self._files.path(row["inputs_ref"])
            inputs = self._files.lazy(row["inputs_ref"], row["inputs_sha256"],
                                      f"inputs of request {key!r}")
        results: Mapping[str, np.ndarray] = {}
        if row["result_arrays"] is not None:
            arrays: bytes = row["result_arrays"]
            results = LazyArrays(lambda: decode_arrays(arrays, f"result of request {key!r}"))
        return JournalEntry(
            key=key, deployment=row["deployment"], kind=row["kind"],
            state=EntryState(row["state"]), attempts=row["attempts"], created=row["created"],
            updated=row["updated"], request=row["request"], inputs=inputs,
            inputs_ref=None if ref_path is None else str(ref_path),
            served_by=row["served_by"], result=row["result"], result_arrays=results,
            error=row["error"])


__all__ = ["EntryState", "Journal", "JournalEntry", "JournalLimits"]
