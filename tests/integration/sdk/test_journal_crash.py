"""The request journal survives SIGKILL: no torn entry, no row without its side file.

Real child processes (`support.journal_writer`) journal requests in a tight loop;
the test kills each at an arbitrary moment (SIGKILL: no cleanup, no atexit), then
reads the file back, first with plain sqlite3 (what the crash left) and then through
`Journal` (what `resume()` would see): every row holds exactly what the writer put in
it at one point of the entry's life, an unfinished one its inputs (readable), a
finished one none (they are dropped in the transaction that finishes it), and every
side file a row names exists. Writer after writer continues on the same crashed
journal; every other one runs with a short max age, so entries are pruned while it runs.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

import support.journal_writer as writer
from edge_runtime.sdk.journal import EntryState, Journal, JournalEntry

TESTS_DIR = Path(__file__).resolve().parents[2]
ENTRIES_BEFORE_KILL = 8
ROUNDS = 12


class Writers:
    """The forking writer (`support.journal_writer` with no arguments): one interpreter
    start for all rounds, a fresh process per writer. Its lines are read by a thread, so
    a writer that stops talking fails the test at a deadline instead of hanging it."""

    def __init__(self) -> None:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
            [str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "support.journal_writer"], env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put("")

    def _line(self, deadline: float, expect_exit: bool = False) -> list[str]:
        try:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail("the writer said nothing before the deadline")
        if not line or (line.startswith("exited") and not expect_exit):
            self.process.kill()  # its stderr holds the writer's traceback
            assert self.process.stderr is not None
            pytest.fail(f"the writer exited early ({line.strip()}): "
                        f"{self.process.stderr.read()[-2000:]}")
        words = line.split()
        assert len(words) in (2, 3) and words[0] in ("pid", "added", "exited"), line
        return words

    def run_and_kill(self, path: Path, prefix: str, max_age_s: float, min_s: float) -> int:
        """Fork a writer, SIGKILL it once it has committed ENTRIES_BEFORE_KILL entries and
        run `min_s`; the last index it reported committed."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"{path} {prefix} {max_age_s}\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + 30
        pid, last, started = 0, -1, time.monotonic()
        while not pid or last < ENTRIES_BEFORE_KILL or time.monotonic() - started < min_s:
            words = self._line(deadline)
            if words[0] == "pid":
                pid = int(words[1])
            else:
                last = int(words[1])
        time.sleep(random.uniform(0.0, 0.01))  # anywhere inside an add, answer or prune
        os.kill(pid, signal.SIGKILL)
        while (words := self._line(deadline, expect_exit=True))[0] != "exited":
            last = int(words[1])  # said between our last read and the kill
        assert words[1:] == [str(pid), str(-signal.SIGKILL)], words
        return last

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=10)


@pytest.fixture()
def writers() -> Iterator[Writers]:
    started = Writers()
    try:
        yield started
    finally:
        started.process.kill()
        started.process.wait()


FINISHED = {EntryState.DELIVERED.value, EntryState.FAILED.value}


def _raw_rows(path: Path) -> dict[str, tuple[str, str | None, bool]]:
    """key -> (state, inputs_ref, inline inputs stored?), read straight from the file the
    crash left."""
    with closing(sqlite3.connect(path)) as conn:
        return {key: (state, ref, bool(inline)) for key, state, ref, inline in conn.execute(
            "SELECT key, state, inputs_ref, inputs IS NOT NULL FROM entries")}


def _side_files(path: Path) -> set[str]:
    side = path.with_name(path.name + ".inputs")
    return {p.name for p in side.iterdir()} if side.is_dir() else set()


def _assert_arrays_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name, array in want.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape
        assert got[name].tobytes() == array.tobytes()


def _check_entry(entry: JournalEntry, prefix: str, expired_ok: bool) -> None:
    """The entry is exactly what the writer had committed at one step of its loop."""
    assert entry.key.startswith(prefix)
    i = int(entry.key[len(prefix):])
    assert (entry.deployment, entry.kind) == (writer.DEPLOYMENT, writer.kind_of(i))
    assert entry.request == writer.expected_request(i)
    if entry.finished:  # its inputs were dropped when it finished
        assert (dict(entry.inputs), entry.inputs_ref) == ({}, None), entry.key
    else:  # reads any side file
        _assert_arrays_equal(dict(entry.inputs), writer.expected_inputs(i))
    if entry.inputs_ref is not None:
        assert Path(entry.inputs_ref).is_file()
        assert Path(entry.inputs_ref).name == f"{entry.key}.npz"
    assert entry.attempts in (0, 1)
    expired = expired_ok and entry.state is EntryState.FAILED and entry.error is not None \
        and entry.error.startswith("expired")
    allowed = {EntryState.PENDING}
    if i % 4 == 3:
        allowed.add(EntryState.FAILED)
    else:
        allowed |= {EntryState.ANSWERED} | ({EntryState.DELIVERED} if i % 4 != 2 else set())
    assert expired or entry.state in allowed, (entry.key, entry.state)
    if entry.state is EntryState.FAILED and not expired:
        assert entry.error == writer.expected_error(i)
    if entry.result is not None:
        assert entry.served_by == writer.SERVED_BY
        assert entry.result == writer.expected_result(i)
        _assert_arrays_equal(dict(entry.result_arrays), writer.expected_result_arrays(i))
    else:
        assert entry.state in (EntryState.PENDING, EntryState.FAILED)
        assert entry.served_by is None and not entry.result_arrays


def _check_after_crash(path: Path) -> set[str]:
    """What the crash left: every side file a row names exists, and no finished row holds
    inputs. The files no row names."""
    rows = _raw_rows(path)
    files = _side_files(path)
    referenced = {ref for _, ref, _ in rows.values() if ref is not None}
    assert referenced <= files, f"rows name missing side files: {referenced - files}"
    holding = {k for k, (state, ref, inline) in rows.items()
               if state in FINISHED and (ref is not None or inline)}
    assert not holding, f"finished entries still hold their inputs: {sorted(holding)[:5]}"
    return files - referenced


def _check_reopened(journal: Journal, path: Path, current: str) -> None:
    """Through `Journal`: every row checks out (an earlier writer's may have expired when
    a later one opened the journal), counts add up, and opening left no stray file."""
    entries = [journal.get(key) for key in _raw_rows(path)]
    for entry in entries:
        assert entry is not None
        _check_entry(entry, entry.key[0], expired_ok=entry.key[0] != current)
    counts = journal.counts()
    assert sum(counts.values()) == len(entries)
    for state in EntryState:
        assert counts[state.value] == sum(1 for e in entries if e is not None and e.state is state)
    unfinished = journal.unfinished()
    assert len(unfinished) == counts["pending"] + counts["answered"]
    assert [e.created for e in unfinished] == sorted(e.created for e in unfinished)
    assert _side_files(path) == {ref for _, ref, _ in _raw_rows(path).values() if ref}, \
        "opening the journal leaves exactly the side files its rows name"


def _check_run(path: Path, prefix: str, last: int) -> None:
    """A writer that pruned nothing: its rows are a run of keys with no gap that holds
    the last one it reported committed, and only the last one can be mid-life."""
    keys = sorted(k for k in _raw_rows(path) if k.startswith(prefix))
    assert keys == [f"{prefix}{i:06d}" for i in range(len(keys))]
    assert len(keys) - 1 >= last >= ENTRIES_BEFORE_KILL
    with Journal(path, writer.limits(86400.0)) as journal:
        for key in keys[:-1]:
            entry = journal.get(key)
            assert entry is not None and entry.state is not EntryState.PENDING, key
            assert entry.attempts == 1


def test_killed_writers_leave_no_torn_entry(tmp_path: Path, writers: Writers) -> None:
    path = tmp_path / "app" / "requests.db"
    prefixes = "abcdefghijklmnop"[:ROUNDS]
    for round_, prefix in enumerate(prefixes):
        # odd rounds prune what finished more than 50 ms ago (their side files with it)
        # and expire the earlier rounds' unfinished entries
        pruning = round_ % 2 == 1
        last = writers.run_and_kill(path, prefix, 0.05 if pruning else 86400.0,
                                    min_s=0.15 if pruning else 0.0)
        orphans = _check_after_crash(path)
        if not pruning:
            # nothing was pruned: the only file no row names is the next entry's, written
            # (or half written, as .tmp) before its row could commit, or the last entry's,
            # finished but killed before its file was deleted
            rows = _raw_rows(path)
            n = sum(1 for k in rows if k.startswith(prefix))
            allowed = {f"{prefix}{n:06d}.npz", f"{prefix}{n:06d}.npz.tmp"}
            if rows[f"{prefix}{n - 1:06d}"][0] in FINISHED:
                allowed.add(f"{prefix}{n - 1:06d}.npz")
            assert len(orphans) <= 1 and orphans <= allowed, orphans
            _check_run(path, prefix, last)
        with Journal(path, writer.limits(86400.0)) as journal:
            _check_reopened(journal, path, prefix)
            if pruning:
                keys = [k for k in _raw_rows(path) if k.startswith(prefix)]
                assert len(keys) < last + 1, "the writer pruned finished entries"
                earlier_rows = [journal.get(k) for k in _raw_rows(path)
                                if k[0] in prefixes[:round_]]
                assert all(e is not None and e.finished for e in earlier_rows), \
                    "earlier unfinished entries expired when the pruning writer opened"
        time.sleep(0.06)  # what finished is older than the next pruning writer's max age
    writers.close()
