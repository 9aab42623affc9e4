"""The request journal's files on disk: its SQLite database and its side files.

Why a module of its own: `journal.py` is the entries' state machine (which transition
is allowed, what each one stores); what makes it durable is file work below it: the
SQLite file's opening, settings, schema and transactions (`open_database`,
`transaction`), and the side files that hold inputs too big to store inline
(`SideFiles`). Interleaved with the state machine, that work would bury it. The
rules split cleanly: this module does the files; `Journal` decides when.

The database: WAL mode with `synchronous=FULL` (a commit that returned survives a
crash or a power loss, and a write cut short leaves nothing), one `BEGIN IMMEDIATE`
transaction per write (so writers in several processes are serialised by SQLite),
and a schema version that refuses files of a newer edge-runtime.

The side files must agree with the rows that name them through any crash:

- A side file is written and made durable *before* the row that names it commits,
  so a committed row never names a missing or half-written file.
- A side file is deleted only *after* no committed row names it, and only while the
  journal's write lock is held (`sweep` is called inside a write transaction and
  asks the journal, through `named`, whether a row names each file), so neither a
  crash nor another process writing the same journal can leave a row without its
  file. A crash after the commit and before the unlink leaves an orphan, which the
  sweep when the journal is next opened deletes.

A side file is `<journal>.inputs/<key>.npz` (the journal checks that a key is a plain
file name); `<key>.npz.tmp` is one being written. Other files in the directory are
not ours and are left alone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

from edge_runtime.errors import JournalError
from edge_runtime.sdk.journal_codec import LazyArrays, decode_arrays

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0
"""How long a write waits for another process that holds the same journal's write lock."""

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
    inputs BLOB,            -- .npz bytes when inline (NULL once finished)
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


# --- the database ---------------------------------------------------------------------

def open_database(path: Path) -> sqlite3.Connection:
    """A connection to the journal at `path` (made, with its directories, if missing), in
    WAL mode, its schema created or checked; JournalError if it is not usable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise JournalError(f"the request journal {path} is a directory: "
                               "give the path of a file (e.g. requests.db) instead")
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
    except (OSError, sqlite3.Error) as error:
        raise open_error(path, error) from error
    conn.row_factory = sqlite3.Row
    try:
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("request journal %s: SQLite refused WAL mode (%s); commits are "
                            "still durable, but slower", path, mode)
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as error:
            raise open_error(path, error) from error
        with transaction(conn, path):
            _check_schema(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema in an empty database; refuse a foreign or newer one."""
    tables = {name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    if "schema_version" not in tables:
        if tables:
            raise JournalError(
                f"{path} is an SQLite database but not an edge-runtime request journal "
                f"(it has tables {sorted(tables)[:5]}): choose another path")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        return
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    version = row[0] if row else None
    if not isinstance(version, int) or version < 1:
        raise JournalError(f"the request journal {path} has no valid schema version "
                           "(damaged?): move it away and start a new journal")
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"the request journal {path} was written by a newer edge-runtime (schema "
            f"{version}; this one reads up to {SCHEMA_VERSION}): upgrade edge-runtime, or "
            "use another journal path")


@contextmanager
def transaction(conn: sqlite3.Connection, path: Path) -> Iterator[sqlite3.Connection]:
    """One BEGIN IMMEDIATE transaction (it waits for the write lock): committed if the
    block returns, rolled back if it raises; SQLite failures become JournalError. The
    caller serialises its own threads on `conn`."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as error:
        raise io_error(path, error) from error
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException as error:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(error, sqlite3.Error):
            raise io_error(path, error) from error
        raise


def open_error(path: Path, error: BaseException) -> JournalError:
    return JournalError(
        f"cannot open the request journal {path}: {error}. It must be a writable SQLite "
        "file made by edge-runtime (or not exist yet): fix its permissions, or move it "
        "away and pass another journal path")


def io_error(path: Path, error: sqlite3.Error) -> JournalError:
    busy = "locked" in str(error) or "busy" in str(error)
    hint = (f"another process held it for over {BUSY_TIMEOUT_S:g} s" if busy
            else "is the disk full or the file damaged?")
    return JournalError(f"the request journal {path} could not be written: {error} ({hint})")


# --- side files -----------------------------------------------------------------------

SUFFIX = ".npz"
TMP = ".tmp"
_OURS = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}\.npz(\.tmp)?")
"""The names `SideFiles` writes: a journal key, `.npz`, and `.tmp` while written."""


class SideFiles:
    """The side files of one journal, in `directory` (made on the first write)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / name

    def write(self, key: str, blob: bytes) -> tuple[str, str]:
        """Write `blob` as `<key>.npz` durably (a temporary file, fsync, rename, fsync of
        the directory): the file's name and the sha256 to store in its row."""
        name = key + SUFFIX
        tmp = self.path(name + TMP)
        try:
            if not self.directory.is_dir():
                self.directory.mkdir(exist_ok=True)
                _fsync_dir(self.directory.parent)
            with open(tmp, "wb") as file:
                file.write(blob)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.path(name))
            _fsync_dir(self.directory)
        except OSError as error:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise JournalError(f"cannot write the inputs of request {key!r} to "
                               f"{self.directory}: {error} (disk full? permissions?)") from error
        return name, hashlib.sha256(blob).hexdigest()

    def load(self, name: str, sha256: str | None, where: str) -> dict[str, np.ndarray]:
        """The arrays in side file `name`, checked against `sha256` when given; a missing,
        altered or damaged file is a JournalError naming `where`."""
        path = self.path(name)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise JournalError(f"{where} are missing ({error}): the file was deleted outside "
                               "edge-runtime") from error
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise JournalError(f"{where} in {path} do not match their sha256: the file was "
                               "modified or damaged")
        return decode_arrays(data, where)

    def lazy(self, name: str, sha256: str | None, where: str) -> LazyArrays:
        """`load` deferred to the arrays' first use (listing entries reads no file)."""
        return LazyArrays(lambda: self.load(name, sha256, where))

    def names(self) -> list[str]:
        """Every file in the directory with a name `write` makes (none if there is no
        directory yet); OSError if the directory cannot be listed."""
        try:
            return [p.name for p in self.directory.iterdir() if _OURS.fullmatch(p.name)]
        except FileNotFoundError:
            return []

    def sweep(self, names: Iterable[str], named: Callable[[str], bool]) -> None:
        """Delete each of `names` that is a temporary file or that no committed row names
        (`named(name)` is false). Call it holding the journal's write lock, so no writer
        is between writing a file and committing its row. A file that cannot be deleted
        is logged and left for the next sweep."""
        for name in names:
            if name.endswith(TMP) or not named(name):
                try:
                    self.path(name).unlink(missing_ok=True)
                except OSError as error:
                    log.warning("request journal side files %s: cannot delete %s: %s",
                                self.directory, name, error)

    def discard(self, name: str) -> None:
        """Delete side file `name` whose row was never committed (best effort: the sweep
        on the next open deletes it otherwise)."""
        with suppress(OSError):
            self.path(name).unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in `directory` durable (POSIX; a no-op elsewhere)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["SideFiles", "open_database", "open_error", "transaction"]
