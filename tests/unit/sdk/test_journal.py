"""The request journal and its codec: transitions, limits, side files, reopening, bad files.

Every test uses a real SQLite file in tmp_path; time is a settable clock, so aging
is tested without waiting.
"""

from __future__ import annotations

import dataclasses
import io
import sqlite3
import threading
import typing
import zipfile
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from edge_runtime.errors import ConfigError, DuplicateRequestError, JournalError, JournalFullError
from edge_runtime.llm.engine import Generation
from edge_runtime.protocol import StageTiming
from edge_runtime.sdk.fallback.targets import GenerationRequest
from edge_runtime.sdk.journal import EntryState, Journal, JournalEntry, JournalLimits
from edge_runtime.sdk.journal_codec import (
    decode_arrays,
    decode_generation,
    decode_generation_request,
    decode_result,
    encode_arrays,
    encode_generation,
    encode_generation_request,
    encode_result,
)
from edge_runtime.sdk.result import Result

DEPLOYMENT = "0f" * 32
DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def opener(tmp_path: Path, clock: Clock) -> Iterator[Callable[..., Journal]]:
    """opener(**limits) -> a Journal on tmp_path/j/requests.db (closed after the test)."""
    opened: list[Journal] = []

    def open_(**limits: Any) -> Journal:
        journal = Journal(tmp_path / "j" / "requests.db", JournalLimits(**limits), clock=clock)
        opened.append(journal)
        return journal

    yield open_
    for journal in opened:
        journal.close()


def _inputs(seed: int = 0) -> dict[str, np.ndarray]:
    return {"image": np.arange(12, dtype=np.float32).reshape(1, 3, 4) + seed,
            "ids": np.array([seed, 2, 3], np.int64)}


def _assert_same(got: typing.Mapping[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        assert got[name].tobytes() == array.tobytes(), name


def _entry(journal: Journal, key: str) -> JournalEntry:
    entry = journal.get(key)
    assert entry is not None
    return entry


# --- transitions -----------------------------------------------------------------------

def test_an_entry_goes_pending_answered_delivered(opener: Callable[..., Journal],
                                                  clock: Clock) -> None:
    journal = opener()
    key = journal.new_key()
    assert len(key) == 32 and key != journal.new_key()
    journal.add(key, DEPLOYMENT, "pipeline", b"\x81\xa1r\x01", _inputs())
    entry = _entry(journal, key)
    assert (entry.key, entry.deployment, entry.kind, entry.state) == (
        key, DEPLOYMENT, "pipeline", EntryState.PENDING)
    assert (entry.attempts, entry.created, entry.updated) == (0, clock.now, clock.now)
    assert entry.request == b"\x81\xa1r\x01" and entry.inputs_ref is None
    assert (entry.served_by, entry.result, entry.error) == (None, None, None)
    _assert_same(entry.inputs, _inputs())
    assert not entry.result_arrays and not entry.finished

    clock.now += 1
    assert journal.attempt(key) == 1
    assert journal.attempt(key) == 2
    assert _entry(journal, key).updated == clock.now
    clock.now += 1
    journal.answered(key, "local", b"result", {"y": np.ones(3, np.float16)})
    entry = _entry(journal, key)
    assert (entry.state, entry.served_by, entry.result, entry.attempts) == (
        EntryState.ANSWERED, "local", b"result", 2)
    _assert_same(entry.result_arrays, {"y": np.ones(3, np.float16)})
    assert [e.key for e in journal.unfinished()] == [key]
    clock.now += 1
    journal.delivered(key)
    entry = _entry(journal, key)
    assert entry.state is EntryState.DELIVERED and entry.finished
    assert (entry.created, entry.updated) == (clock.now - 3, clock.now)
    assert entry.result == b"result"  # kept: a repeated key still finds its answer
    assert journal.unfinished() == []
    assert journal.counts() == {"pending": 0, "answered": 0, "delivered": 1, "failed": 0}


def test_failed_from_pending_or_answered_keeps_what_was_there(
        opener: Callable[..., Journal]) -> None:
    journal = opener()
    journal.add("p", DEPLOYMENT, "llm", b"prompt")
    journal.add("a", DEPLOYMENT, "llm", b"prompt")
    journal.answered("a", "cluster", b"gen", {})
    journal.failed("p", "ClusterUnavailableError: all agents down")
    journal.failed("a", "the caller went away")
    p, a = _entry(journal, "p"), _entry(journal, "a")
    assert (p.state, p.error, p.result, dict(p.inputs)) == (
        EntryState.FAILED, "ClusterUnavailableError: all agents down", None, {})
    assert (a.state, a.error, a.result, a.served_by) == (
        EntryState.FAILED, "the caller went away", b"gen", "cluster")
    assert journal.counts()["failed"] == 2


STATES = ("pending", "answered", "delivered", "failed")


def _put_in(journal: Journal, key: str, state: str) -> None:
    journal.add(key, DEPLOYMENT, "pipeline", b"r", _inputs())
    if state in ("answered", "delivered"):
        journal.answered(key, "cluster", b"first", {"y": np.zeros(1)})
    if state == "delivered":
        journal.delivered(key)
    if state == "failed":
        journal.failed(key, "boom")


@pytest.mark.parametrize(("state", "action", "error"), [
    ("answered", "attempt", JournalError),
    ("delivered", "attempt", JournalError),
    ("failed", "attempt", JournalError),
    ("answered", "answered", DuplicateRequestError),
    ("delivered", "answered", DuplicateRequestError),
    ("failed", "answered", JournalError),
    ("pending", "delivered", JournalError),
    ("delivered", "delivered", JournalError),
    ("failed", "delivered", JournalError),
    ("delivered", "failed", JournalError),
    ("failed", "failed", JournalError),
])
def test_a_wrong_transition_is_refused_and_changes_nothing(
        opener: Callable[..., Journal], state: str, action: str,
        error: type[Exception]) -> None:
    journal = opener()
    _put_in(journal, "k1", state)
    before = _entry(journal, "k1")
    calls: dict[str, Callable[[], object]] = {
        "attempt": lambda: journal.attempt("k1"),
        "answered": lambda: journal.answered("k1", "cloud", b"second", {"z": np.ones(2)}),
        "delivered": lambda: journal.delivered("k1"),
        "failed": lambda: journal.failed("k1", "late error"),
    }
    with pytest.raises(error, match=f"'k1'.*{state}") as raised:
        calls[action]()
    assert type(raised.value) is error
    after = _entry(journal, "k1")
    assert (after.state.value, after.result, after.served_by, after.error, after.attempts,
            after.updated) == (state, before.result, before.served_by, before.error,
                               before.attempts, before.updated)
    if before.result is not None:
        assert list(after.result_arrays) == ["y"]  # the first answer is kept


@pytest.mark.parametrize("action", ["attempt", "answered", "delivered", "failed"])
def test_an_unknown_key_is_refused_by_name(opener: Callable[..., Journal], action: str) -> None:
    journal = opener()
    calls: dict[str, Callable[[], object]] = {
        "attempt": lambda: journal.attempt("nope"),
        "answered": lambda: journal.answered("nope", "cluster", b"", {}),
        "delivered": lambda: journal.delivered("nope"),
        "failed": lambda: journal.failed("nope", "x"),
    }
    with pytest.raises(JournalError, match=r"'nope'.*no entry"):
        calls[action]()
    assert journal.get("nope") is None


@pytest.mark.parametrize("state", STATES)
def test_a_used_key_is_refused_naming_its_state(opener: Callable[..., Journal],
                                                state: str) -> None:
    journal = opener()
    _put_in(journal, "k1", state)
    with pytest.raises(DuplicateRequestError, match=f"'k1'.*{state}.*new_key"):
        journal.add("k1", "other", "llm", b"other request")
    entry = _entry(journal, "k1")
    assert (entry.state.value, entry.deployment, entry.request) == (state, DEPLOYMENT, b"r")
    assert sum(journal.counts().values()) == 1


@pytest.mark.parametrize(("key", "kind", "inputs", "match"), [
    ("../escape", "pipeline", None, "not valid"),
    ("", "pipeline", None, "not valid"),
    ("k" * 129, "pipeline", None, "not valid"),
    ("ok", "onnx", None, "kind"),
    ("ok", "pipeline", {"x": np.array([object()])}, "without pickle"),
])
def test_bad_arguments_to_add_are_refused_and_add_nothing(
        opener: Callable[..., Journal], key: str, kind: str,
        inputs: dict[str, np.ndarray] | None, match: str) -> None:
    journal = opener()
    with pytest.raises(JournalError, match=match):
        journal.add(key, DEPLOYMENT, kind, b"r", inputs)
    assert sum(journal.counts().values()) == 0


# --- limits ----------------------------------------------------------------------------

def test_a_full_journal_refuses_new_requests_until_one_finishes(
        opener: Callable[..., Journal]) -> None:
    journal = opener(max_unfinished=3)
    for key in ("a", "b", "c"):
        journal.add(key, DEPLOYMENT, "llm", b"r")
    journal.answered("a", "cluster", b"", {})  # answered is still unfinished
    with pytest.raises(JournalFullError, match=r"3 unfinished.*resume\(\).*raise the limit"):
        journal.add("d", DEPLOYMENT, "llm", b"r")
    assert journal.get("d") is None
    journal.delivered("a")
    journal.add("d", DEPLOYMENT, "llm", b"r")
    journal.failed("b", "gone")
    journal.add("e", DEPLOYMENT, "llm", b"r")
    assert journal.counts() == {"pending": 3, "answered": 0, "delivered": 1, "failed": 1}


def test_invalid_limits_are_a_config_error() -> None:
    with pytest.raises(ConfigError):
        JournalLimits(max_unfinished=0)
    with pytest.raises(ConfigError):
        JournalLimits(max_age_s=0)


def test_finished_entries_are_pruned_after_max_age(opener: Callable[..., Journal],
                                                   clock: Clock) -> None:
    journal = opener(max_age_s=DAY, max_inline_bytes=64)
    keys = ("done", "failed", "pending", "answered")
    for key in keys:
        journal.add(key, DEPLOYMENT, "pipeline", b"r", _inputs())  # side files
    side = {k: Path(_entry(journal, k).inputs_ref or "") for k in keys}
    assert all(p.is_file() for p in side.values())
    journal.answered("done", "cluster", b"", {})
    journal.delivered("done")
    journal.failed("failed", "x")
    journal.answered("answered", "cluster", b"", {})
    assert not side["done"].exists() and not side["failed"].exists()  # gone when finished

    clock.now += DAY  # exactly max_age_s: not yet older
    journal.add("x1", DEPLOYMENT, "llm", b"r")
    assert _entry(journal, "done").result == b""
    clock.now += 1  # now older: the next add prunes them
    journal.add("x2", DEPLOYMENT, "llm", b"r")
    assert journal.get("done") is None and journal.get("failed") is None
    # unfinished entries are not pruned; they expire when the journal is next opened
    assert [e.key for e in journal.unfinished()] == ["pending", "answered", "x1", "x2"]
    assert side["pending"].is_file() and side["answered"].is_file()
    journal.close()

    journal = opener(max_age_s=DAY, max_inline_bytes=64)
    for key in ("pending", "answered"):
        entry = _entry(journal, key)
        assert entry.state is EntryState.FAILED and entry.error is not None
        assert entry.error.startswith("expired") and entry.updated == clock.now
        assert (dict(entry.inputs), entry.inputs_ref) == ({}, None)  # finished: dropped
        assert not side[key].exists()
    assert [p.name for p in side["pending"].parent.iterdir()] == []
    assert [e.key for e in journal.unfinished()] == ["x1", "x2"]  # younger than max_age_s
    journal.close()

    clock.now += DAY + 1
    journal = opener(max_age_s=DAY)  # opening prunes too
    assert journal.counts() == {"pending": 0, "answered": 0, "delivered": 0, "failed": 2}
    assert journal.get("pending") is None


def _stored_inputs(journal: Journal) -> dict[str, tuple[bool, str | None, str | None]]:
    """key -> (inline inputs stored?, inputs_ref, inputs_sha256), read straight from the file."""
    with closing(sqlite3.connect(journal.path)) as conn:
        return {key: (inline, ref, digest) for key, inline, ref, digest in conn.execute(
            "SELECT key, inputs IS NOT NULL, inputs_ref, inputs_sha256 FROM entries")}


@pytest.mark.parametrize("inline", [True, False])
def test_a_finished_entry_drops_its_inputs_and_keeps_its_result(
        opener: Callable[..., Journal], inline: bool) -> None:
    journal = opener(max_inline_bytes=1 << 20 if inline else 0)
    keys = ("delivered", "failed-pending", "failed-answered", "pending", "answered")
    for key in keys:
        journal.add(key, DEPLOYMENT, "pipeline", b"r", _inputs())
    files = {k: Path(ref) for k in keys if (ref := _entry(journal, k).inputs_ref)}
    assert len(files) == (0 if inline else 5) and all(f.is_file() for f in files.values())
    journal.answered("delivered", "cluster", b"y", {"y": np.ones(2)})
    journal.delivered("delivered")
    journal.failed("failed-pending", "boom")
    journal.answered("failed-answered", "cloud", b"z", {"z": np.zeros(1)})
    journal.failed("failed-answered", "gone")
    journal.answered("answered", "cluster", b"w", {})

    finished = ("delivered", "failed-pending", "failed-answered")
    stored = _stored_inputs(journal)
    for key in finished:
        entry = _entry(journal, key)
        assert entry.finished and (dict(entry.inputs), entry.inputs_ref) == ({}, None), key
        assert stored[key] == (False, None, None), key
        assert key not in files or not files[key].exists(), key
    delivered, failed = _entry(journal, "delivered"), _entry(journal, "failed-answered")
    assert (delivered.result, delivered.served_by) == (b"y", "cluster")
    _assert_same(delivered.result_arrays, {"y": np.ones(2)})
    assert (failed.result, failed.served_by, failed.error) == (b"z", "cloud", "gone")
    _assert_same(failed.result_arrays, {"z": np.zeros(1)})
    for key in ("pending", "answered"):  # unfinished: kept
        _assert_same(_entry(journal, key).inputs, _inputs())
    if not inline:
        assert sorted(p.name for p in files["pending"].parent.iterdir()) == [
            "answered.npz", "pending.npz"]
    journal.close()
    with opener(max_inline_bytes=0) as again:  # and so it stays
        assert (dict(_entry(again, "delivered").inputs), _stored_inputs(again)) == ({}, stored)


def test_opening_drops_inputs_a_finished_entry_still_holds(
        opener: Callable[..., Journal]) -> None:
    """What a crash between finishing an entry and deleting its side file leaves, and
    what a journal written before finished entries dropped their inputs holds."""
    journal = opener(max_inline_bytes=0)
    for key in ("crashed", "old", "kept"):
        journal.add(key, DEPLOYMENT, "pipeline", b"r", _inputs())
    saved = {k: Path(_entry(journal, k).inputs_ref or "") for k in ("crashed", "old")}
    data = {k: p.read_bytes() for k, p in saved.items()}
    stored = _stored_inputs(journal)
    journal.failed("crashed", "x")
    journal.answered("old", "cluster", b"y", {})
    journal.delivered("old")
    journal.close()
    for key, path in saved.items():  # put back what the crash / the older version left
        path.write_bytes(data[key])
    with closing(sqlite3.connect(journal.path)) as conn, conn:
        conn.execute("UPDATE entries SET inputs_ref = ?, inputs_sha256 = ? WHERE key = 'old'",
                     stored["old"][1:])
    journal = opener(max_inline_bytes=0)
    assert not saved["crashed"].exists() and not saved["old"].exists()
    assert _stored_inputs(journal)["old"] == (False, None, None)
    assert dict(_entry(journal, "old").inputs) == {}
    assert [p.name for p in saved["old"].parent.iterdir()] == ["kept.npz"]
    _assert_same(_entry(journal, "kept").inputs, _inputs())


def test_timestamps_edited_through_sqlite_age_entries_too(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with Journal(path) as journal:
        journal.add("old", DEPLOYMENT, "llm", b"r")
        journal.add("new", DEPLOYMENT, "llm", b"r")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE entries SET created = created - 8 * 86400 WHERE key = 'old'")
    with Journal(path) as journal:
        assert _entry(journal, "old").state is EntryState.FAILED
        assert [e.key for e in journal.unfinished()] == ["new"]


# --- big inputs in side files ----------------------------------------------------------

def test_big_inputs_go_to_a_side_file_and_round_trip(opener: Callable[..., Journal],
                                                     tmp_path: Path) -> None:
    journal = opener(max_inline_bytes=4096)
    image = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    big: dict[str, np.ndarray] = {  # `file` and `allow_pickle` are np.savez's own kwargs
        "image": image, "file": np.arange(3), "allow_pickle": np.array([True])}
    journal.add("big", DEPLOYMENT, "pipeline", b"r", big)
    journal.add("small", DEPLOYMENT, "pipeline", b"r", _inputs())
    ref = _entry(journal, "big").inputs_ref
    assert ref == str(tmp_path / "j" / "requests.db.inputs" / "big.npz")
    assert Path(ref).stat().st_size > 4096
    assert _entry(journal, "small").inputs_ref is None
    assert sorted(p.name for p in Path(ref).parent.iterdir()) == ["big.npz"]
    _assert_same(_entry(journal, "big").inputs, big)
    journal.close()
    _assert_same(_entry(opener(max_inline_bytes=4096), "big").inputs, big)


def test_a_damaged_or_missing_side_file_fails_on_use_naming_the_request(
        opener: Callable[..., Journal]) -> None:
    journal = opener(max_inline_bytes=0)
    journal.add("k1", DEPLOYMENT, "pipeline", b"r", _inputs())
    journal.add("k2", DEPLOYMENT, "pipeline", b"r", _inputs(1))
    ref1 = Path(_entry(journal, "k1").inputs_ref or "")
    data = bytearray(ref1.read_bytes())
    data[-1] ^= 1
    ref1.write_bytes(bytes(data))
    Path(_entry(journal, "k2").inputs_ref or "").unlink()
    entries = journal.unfinished()  # listing does not read the side files
    assert [e.key for e in entries] == ["k1", "k2"]
    with pytest.raises(JournalError, match=r"'k1'.*sha256"):
        dict(entries[0].inputs)
    with pytest.raises(JournalError, match=r"'k2'.*missing"):
        dict(entries[1].inputs)


def test_opening_deletes_side_files_no_row_names(opener: Callable[..., Journal]) -> None:
    journal = opener(max_inline_bytes=0)
    journal.add("kept", DEPLOYMENT, "pipeline", b"r", _inputs())
    side = Path(_entry(journal, "kept").inputs_ref or "").parent
    journal.close()
    # what a crash between writing a side file and committing its row leaves behind
    (side / "crashed.npz").write_bytes(encode_arrays(_inputs()))
    (side / "crashed2.npz.tmp").write_bytes(b"half")
    (side / "kept.npz.tmp").write_bytes(b"half")
    (side / "notes.txt").write_text("not ours")
    journal = opener(max_inline_bytes=0)
    assert sorted(p.name for p in side.iterdir()) == ["kept.npz", "notes.txt"]
    _assert_same(_entry(journal, "kept").inputs, _inputs())


# --- reopening, threads, several connections -------------------------------------------

def test_reopening_keeps_every_field(opener: Callable[..., Journal], clock: Clock) -> None:
    journal = opener(max_inline_bytes=200)
    _put_in(journal, "answered", "answered")
    _put_in(journal, "delivered", "delivered")
    _put_in(journal, "failed", "failed")
    clock.now += 5
    journal.add("pending", "other", "llm", b"", None)
    journal.attempt("pending")
    before = {e: _entry(journal, e) for e in ("answered", "delivered", "failed", "pending")}
    counts = journal.counts()
    journal.close()
    journal.close()  # twice is fine
    with pytest.raises(JournalError, match="closed"):
        journal.get("pending")

    with opener(max_inline_bytes=200) as again:
        assert again.counts() == counts
        for key, old in before.items():
            new = _entry(again, key)
            for f in dataclasses.fields(JournalEntry):
                if f.name in ("inputs", "result_arrays"):
                    _assert_same(getattr(new, f.name), dict(getattr(old, f.name)))
                else:
                    assert getattr(new, f.name) == getattr(old, f.name), (key, f.name)
        assert [e.key for e in again.unfinished()] == ["answered", "pending"]
        assert [e.key for e in again.unfinished("other")] == ["pending"]
        assert again.unfinished("unknown") == []
    with pytest.raises(JournalError, match="closed"):
        again.add("z", DEPLOYMENT, "llm", b"")


def test_the_file_is_in_wal_mode_with_a_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "r.db"
    Journal(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]


def test_threads_share_one_journal(opener: Callable[..., Journal]) -> None:
    journal = opener()
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(25):
                key = f"t{t}-{i}"
                journal.add(key, DEPLOYMENT, "pipeline", b"r", _inputs(i))
                journal.attempt(key)
                journal.answered(key, "cluster", b"y", {"y": np.full(2, i)})
                if i % 2:
                    journal.delivered(key)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert journal.counts() == {"pending": 0, "answered": 52, "delivered": 48, "failed": 0}


def test_two_journals_on_one_file_see_each_others_commits(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with Journal(path) as one, Journal(path) as two:
        one.add("k", DEPLOYMENT, "llm", b"r")
        with pytest.raises(DuplicateRequestError):
            two.add("k", DEPLOYMENT, "llm", b"r")
        two.answered("k", "cluster", b"y", {})
        with pytest.raises(DuplicateRequestError):
            one.answered("k", "local", b"z", {})
        assert _entry(one, "k").result == b"y"


# --- files that are not a journal ------------------------------------------------------

def test_a_file_that_is_not_a_database_is_a_journal_error(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    path.write_bytes(b"this is a text file, not SQLite\n" * 100)
    with pytest.raises(JournalError, match=f"{path}.*another journal path"):
        Journal(path)
    assert path.read_bytes().startswith(b"this is a text file")  # left as it was


def test_a_foreign_sqlite_database_is_a_journal_error(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(JournalError, match=r"not an edge-runtime request journal.*users"):
        Journal(path)


def test_a_newer_schema_is_a_journal_error(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    Journal(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(JournalError, match=r"newer edge-runtime.*schema 99.*upgrade"):
        Journal(path)


def test_unusable_paths_are_journal_errors(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="is a directory"):
        Journal(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(JournalError, match="cannot open"):
        Journal(blocker / "sub" / "r.db")
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")  # an empty file is a new, empty database
    with Journal(empty) as journal:
        assert sum(journal.counts().values()) == 0


# --- the codec -------------------------------------------------------------------------

ODD_ARRAYS: dict[str, np.ndarray] = {
    "f16": np.array([1.5, -0.0, np.inf], np.float16),
    "nan": np.frombuffer(np.array([0x7FF8_0000_0000_0001], np.uint64).tobytes(), np.float64),
    "u64": np.array([2**64 - 1, 0], np.uint64),
    "i8": np.arange(-4, 4, dtype=np.int8).reshape(2, 2, 2),
    "c64": np.array([1 + 2j], np.complex64),
    "bool": np.array([[True, False]]),
    "fortran": np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
    "strided": np.arange(10, dtype=np.float32)[::3],
    "scalar": np.array(3.25, np.float64),
    "empty": np.zeros((0, 4), np.float32),
    "text": np.array(["ab", "cde"]),
    "big-endian": np.array([1, 2], ">i4"),
}


def test_arrays_round_trip_bit_for_bit_with_their_dtypes() -> None:
    got = decode_arrays(encode_arrays(ODD_ARRAYS))
    _assert_same(got, ODD_ARRAYS)
    assert got["fortran"].flags.f_contiguous
    assert got["big-endian"].dtype.byteorder == ">"


def test_pickled_or_damaged_arrays_are_journal_errors() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([{"evil": 1}], dtype=object))  # an object array is pickled
    with pytest.raises(JournalError, match="corrupt"):
        decode_arrays(buffer.getvalue())
    with pytest.raises(JournalError, match="corrupt"):
        decode_arrays(encode_arrays(_inputs())[:-30])
    with pytest.raises(JournalError, match=r"not an \.npz"):
        npy = io.BytesIO()
        np.save(npy, np.ones(2))
        decode_arrays(npy.getvalue())
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("x.npy", b"\x93NUMPY garbage")
    with pytest.raises(JournalError):
        decode_arrays(archive.getvalue())


def _sample(hint: Any, seed: int) -> Any:
    """A value of type `hint`, unlike any default (so a dropped field shows)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, __import__("types").UnionType):
        return _sample(next(a for a in args if a is not type(None)), seed)
    if hint is bool:
        return True
    if hint is int:
        return 7 + seed
    if hint is float:
        return 0.25 + seed
    if hint is str:
        return f"s{seed}"
    if origin is tuple:
        return tuple(_sample(args[0], seed + i) for i in range(2))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{f.name: _sample(hints[f.name], seed + i)
                       for i, f in enumerate(dataclasses.fields(hint))})
    raise AssertionError(f"no sample for {hint!r}: teach this test and the codec the type")


def _full(cls: type, **given: Any) -> Any:
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: given[f.name] if f.name in given else _sample(hints[f.name], i)
                  for i, f in enumerate(dataclasses.fields(cls))})


def _fields(record: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)
            if f.name not in skip}


def test_every_field_of_a_result_round_trips_through_the_journal(
        opener: Callable[..., Journal]) -> None:
    result = _full(Result, outputs=dict(ODD_ARRAYS), exit="exit1", trace=None)  # not journaled
    assert result.stages and isinstance(result.stages[0], StageTiming)
    meta, arrays = encode_result(result)
    journal = opener()
    journal.add("k", DEPLOYMENT, "pipeline", b"r")
    journal.answered("k", "cluster", meta, arrays)
    journal.close()
    entry = _entry(opener(), "k")
    assert entry.result is not None
    got = decode_result(entry.result, entry.result_arrays)
    assert _fields(got, skip=("outputs",)) == _fields(result, skip=("outputs",))
    assert list(got.outputs) == list(ODD_ARRAYS)
    _assert_same(got.outputs, ODD_ARRAYS)


def test_generations_and_requests_round_trip() -> None:
    generation = _full(Generation)
    assert decode_generation(encode_generation(generation)) == generation
    request = _full(GenerationRequest)
    assert decode_generation_request(encode_generation_request(request)) == request
    mixed = GenerationRequest((1, 2), None, 5, seed=None, stop=(7, "END", 0))
    assert decode_generation_request(encode_generation_request(mixed)) == mixed
    plain = GenerationRequest((1,), "hi", 3)
    assert decode_generation_request(encode_generation_request(plain)) == plain


def _pack(record: str, fields: dict[str, Any]) -> bytes:
    return msgpack.packb({"record": record, "fields": fields})


def test_older_and_newer_payloads_decode_with_defaults() -> None:
    # written before `seed`, `stop` and friends existed, and by a version with a field
    # this one does not know: defaults fill the gaps, the unknown field is dropped
    old = _pack("GenerationRequest", {"prompt_ids": [1, 2], "prompt_text": "hi",
                                      "max_new_tokens": 4, "from_the_future": 1})
    assert decode_generation_request(old) == GenerationRequest((1, 2), "hi", 4)
    meta = _pack("Result", {"outputs": ["y"], "exit": None, "stage": 1, "latency_s": 2,
                            "fallback": True})  # a field Result no longer has
    result = decode_result(meta, {"y": np.ones(1)})
    assert (result.latency_s, result.stages, result.request_id) == (2.0, (), 0)
    assert isinstance(result.latency_s, float)


@pytest.mark.parametrize(("data", "match"), [
    (b"\xc1\xff not msgpack", "not msgpack"),
    (msgpack.packb([1, 2]), "not a journaled record"),
    (_pack("GenerationRequest", {"prompt_ids": [1], "prompt_text": None,
                                 "max_new_tokens": 4}), "not a Generation"),
    (_pack("Generation", {"prompt_ids": [1]}), "token_ids is missing"),
    (_pack("Generation", {"prompt_ids": [1, "x"], "token_ids": [], "text": "",
                          "finish_reason": "stop", "ttft_s": 0.0, "s_per_token": 0.0}),
     r"prompt_ids\[1\]"),
    (_pack("Generation", {"prompt_ids": [1], "token_ids": [], "text": "",
                          "finish_reason": "stop", "ttft_s": True, "s_per_token": 0.0}),
     "ttft_s"),
])
def test_bad_bytes_are_journal_errors(data: bytes, match: str) -> None:
    with pytest.raises(JournalError, match=match):
        decode_generation(data)


def test_result_arrays_must_match_the_meta() -> None:
    meta, arrays = encode_result(Result({"a": np.ones(1), "b": np.zeros(1)}, None, 0, 0.1))
    with pytest.raises(JournalError, match="do not match"):
        decode_result(meta, {"a": arrays["a"]})
    with pytest.raises(JournalError, match="Result"):
        decode_result(b"", arrays)
