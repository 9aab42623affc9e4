"""`Journal`: the coordinator's request journal, so a crashed app loses no request.

Why: an app that crashes (or is killed, or loses power) mid-request has accepted
work its caller may still wait for. When asked, the coordinator writes each request
here before sending it, the answer when it comes and the hand-over to the caller;
a new process (`Cluster.resume()`) reads back what is unfinished and completes it,
and every request key is answered once.

One SQLite file in WAL mode with `synchronous=FULL`: a commit that returned survives
a crash or a power loss, and a write cut short leaves nothing. Inputs are stored
inline; inputs larger than `JournalLimits.max_inline_bytes` go to a side file
`<journal>.inputs/<key>.npz`, written and fsynced before the row that names it
commits, so a row never names a missing file. Side files are deleted only while the
journal's write lock is held and no committed row names them (so neither a crash
nor another process on the same file can leave a row without its file).

An entry's life: PENDING (accepted) → ANSWERED (result stored) → DELIVERED (handed
to the caller), or → FAILED (a final error handed to the caller) from either of the
first two. Every transition is checked. Finished entries are kept `max_age_s` after
they finished, so a reused key is still refused, then pruned.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from edge_runtime.errors import ConfigError, DuplicateRequestError, JournalError, JournalFullError
from edge_runtime.sdk.journal_codec import (
    LazyArrays,
    decode_arrays,
    encode_arrays,
    load_arrays_file,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0
"""How long a write waits for another process that holds the same journal's write lock."""
KINDS = ("pipeline", "llm")
_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
"""A key names a side file, so it is a plain file name."""
_SIDE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}\.npz(\.tmp)?")

_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE entries (
    key TEXT PRIMARY KEY NOT NULL,
    deployment TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    request BLOB NOT NULL,
    inputs BLOB,            -- .npz bytes when inline
    inputs_ref TEXT,        -- side file name (in <journal>.inputs/) when not
    inputs_sha256 TEXT,     -- of the side file
    served_by TEXT,
    result BLOB,
    result_arrays BLOB,     -- .npz bytes
    error TEXT
);
CREATE INDEX entries_by_state ON entries (state, updated);
CREATE INDEX entries_by_deployment ON entries (deployment, state);
CREATE INDEX entries_by_ref ON entries (inputs_ref) WHERE inputs_ref IS NOT NULL;
"""


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
    """One journaled request as last committed (arrays are not comparable, hence eq=False)."""

    key: str
    deployment: str  # the model's identity: sha256 of the ONNX file or the LLM checkpoint
    kind: str  # "pipeline" | "llm"
    state: EntryState
    attempts: int
    created: float  # unix time
    updated: float
    request: bytes  # opaque msgpack the caller made
    inputs: Mapping[str, np.ndarray]  # loaded on first access; empty for llm
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
        self._side_dir = self.path.with_name(self.path.name + ".inputs")
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_dir():
                raise JournalError(f"the request journal {self.path} is a directory: "
                                   "give the path of a file (e.g. requests.db) instead")
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
        except (OSError, sqlite3.Error) as error:
            raise self._open_error(error) from error
        conn.row_factory = sqlite3.Row
        self._conn = conn
        try:
            self._setup(conn)
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
                ref, digest = self._write_side(key, blob)
            try:
                conn.execute(
                    "INSERT INTO entries (key, deployment, kind, state, attempts, created, "
                    "updated, request, inputs, inputs_ref, inputs_sha256) "
                    "VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?)",
                    (key, deployment, kind, EntryState.PENDING.value, now, now, bytes(request),
                     None if side else blob, ref, digest))
            except BaseException:
                if ref is not None:
                    (self._side_dir / ref).unlink(missing_ok=True)
                raise
        if pruned:
            try:
                self._sweep(pruned)
            except JournalError as error:  # the entry is committed; the next open sweeps
                log.warning("request journal %s: side files not deleted yet: %s", self.path,
                            error)

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
        """An ANSWERED entry's result was handed to the caller: done."""
        self._finish(key, "delivered", EntryState.DELIVERED, (EntryState.ANSWERED,), None)

    def failed(self, key: str, error: str) -> None:
        """A final error was handed to the caller of an unfinished entry: done."""
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
        with self._write() as conn:
            self._state(conn, key, action, allowed)
            conn.execute("UPDATE entries SET state = ?, error = COALESCE(?, error), updated = ? "
                         "WHERE key = ?", (to.value, error, self._clock(), key))

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
        """One BEGIN IMMEDIATE transaction under the lock: committed if the block returns,
        rolled back if it raises; SQLite failures become JournalError."""
        with self._lock:
            conn = self._open()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as error:
                raise self._io_error(error) from error
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(error, sqlite3.Error):
                    raise self._io_error(error) from error
                raise

    def _setup(self, conn: sqlite3.Connection) -> None:
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("request journal %s: SQLite refused WAL mode (%s); commits are "
                            "still durable, but slower", self.path, mode)
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as error:
            raise self._open_error(error) from error
        with self._write() as conn:
            tables = {name for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%'")}
            if "schema_version" not in tables:
                if tables:
                    raise JournalError(
                        f"{self.path} is an SQLite database but not an edge-runtime request "
                        f"journal (it has tables {sorted(tables)[:5]}): choose another path")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                return
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = row[0] if row else None
            if not isinstance(version, int) or version < 1:
                raise JournalError(f"the request journal {self.path} has no valid schema version "
                                   "(damaged?): move it away and start a new journal")
            if version > SCHEMA_VERSION:
                raise JournalError(
                    f"the request journal {self.path} was written by a newer edge-runtime "
                    f"(schema {version}; this one reads up to {SCHEMA_VERSION}): upgrade "
                    "edge-runtime, or use another journal path")

    def _maintain(self) -> None:
        """On open: expire old unfinished entries, prune old finished ones, and delete side
        files no row names (left by a crash between writing the file and committing)."""
        now = self._clock()
        with self._write() as conn:
            conn.execute(
                "UPDATE entries SET state = ?, error = ?, updated = ? "
                "WHERE state IN (?, ?) AND created < ?",
                (EntryState.FAILED.value,
                 f"expired: not finished within max_age_s={self.limits.max_age_s:g} s",
                 now, *UNFINISHED, now - self.limits.max_age_s))
            self._prune(conn, now)
        try:
            names = [p.name for p in self._side_dir.iterdir() if _SIDE.fullmatch(p.name)]
        except FileNotFoundError:
            names = []
        except OSError as error:
            raise self._open_error(error) from error
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
        with self._write() as conn:
            for name in names:
                base = name.removesuffix(".tmp")
                named = conn.execute("SELECT 1 FROM entries WHERE inputs_ref = ?",
                                     (base,)).fetchone()
                if named is None or name != base:
                    try:
                        (self._side_dir / name).unlink(missing_ok=True)
                    except OSError as error:  # tried again at the next open
                        log.warning("request journal %s: cannot delete %s: %s", self.path,
                                    name, error)

    def _write_side(self, key: str, blob: bytes) -> tuple[str, str]:
        """Write `<key>.npz` durably (temporary file, fsync, rename, fsync the directory);
        its name and sha256."""
        name = f"{key}.npz"
        tmp = self._side_dir / (name + ".tmp")
        try:
            if not self._side_dir.is_dir():
                self._side_dir.mkdir(exist_ok=True)
                _fsync_dir(self._side_dir.parent)
            with open(tmp, "wb") as file:
                file.write(blob)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self._side_dir / name)
            _fsync_dir(self._side_dir)
        except OSError as error:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise JournalError(f"cannot write the inputs of request {key!r} to "
                               f"{self._side_dir}: {error} (disk full? permissions?)") from error
        return name, hashlib.sha256(blob).hexdigest()

    def _entry(self, row: sqlite3.Row) -> JournalEntry:
        key: str = row["key"]
        inputs: Mapping[str, np.ndarray] = {}
        ref_path: Path | None = None
        if row["inputs"] is not None:
            blob: bytes = row["inputs"]
            inputs = LazyArrays(lambda: decode_arrays(blob, f"inputs of request {key!r}"))
        elif row["inputs_ref"] is not None:
            ref_path = path = self._side_dir / row["inputs_ref"]
            digest: str | None = row["inputs_sha256"]
            inputs = LazyArrays(
                lambda: load_arrays_file(path, digest, f"inputs of request {key!r}"))
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

    def _open_error(self, error: BaseException) -> JournalError:
        return JournalError(
            f"cannot open the request journal {self.path}: {error}. It must be a writable "
            "SQLite file made by edge-runtime (or not exist yet): fix its permissions, or "
            "move it away and pass another journal path")

    def _io_error(self, error: sqlite3.Error) -> JournalError:
        busy = "locked" in str(error) or "busy" in str(error)
        hint = (f"another process held it for over {BUSY_TIMEOUT_S:g} s" if busy
                else "is the disk full or the file damaged?")
        return JournalError(f"the request journal {self.path} could not be written: "
                            f"{error} ({hint})")


def _fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in `directory` durable (POSIX; a no-op elsewhere)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["EntryState", "Journal", "JournalEntry", "JournalLimits"]
