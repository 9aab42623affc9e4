"""`Cluster.resume()`: finish the requests a crashed app left in the journal.

Why separate from `cluster.py`: resuming is journal bookkeeping over any deployment
that can take journaled requests back (`Resumable`), pipeline or LLM alike.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edge_runtime.llm.engine import Generation
from edge_runtime.sdk.journal import EntryState, Journal, JournalEntry
from edge_runtime.sdk.journal_codec import decode_generation, decode_result
from edge_runtime.sdk.result import Result

log = logging.getLogger(__name__)


class Resumable(Protocol):
    """A deployment whose journaled requests can be run again."""

    @property
    def journal_kind(self) -> str: ...

    @property
    def model_key(self) -> str: ...

    def resume_entries(self, entries: Sequence[JournalEntry], timeout_s: float | None
                       ) -> Iterator[tuple[str, Result | Generation]]: ...


@dataclass(frozen=True)
class Resumed:
    """What `Cluster.resume()` completed: each key's answer, and the keys left alone."""

    results: dict[str, Result | Generation] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # key -> why it was left


def open_journal(journal: str | os.PathLike[str] | Journal | None) -> Journal | None:
    if journal is None or isinstance(journal, Journal):
        return journal
    return Journal(Path(journal).expanduser())


def resume_journal(journal: Journal, deployments: Iterable[Resumable],
                   timeout_s: float | None) -> Resumed:
    """Hand back stored answers, run pending entries again, each key once."""
    by_model = {(d.journal_kind, d.model_key): d for d in deployments}
    resumed = Resumed()
    pending: dict[tuple[str, str], list[JournalEntry]] = {}
    for entry in journal.unfinished():
        if entry.state is EntryState.ANSWERED and entry.result is not None:
            answer: Result | Generation = (
                decode_result(entry.result, entry.result_arrays) if entry.kind == "pipeline"
                else decode_generation(entry.result))
            journal.delivered(entry.key)
            resumed.results[entry.key] = answer
            continue
        target = (entry.kind, entry.deployment)
        if target not in by_model:
            resumed.skipped[entry.key] = (f"no {entry.kind} deployment of model "
                                          f"{entry.deployment[:12]} in this cluster; deploy it "
                                          "and call resume() again")
            continue
        pending.setdefault(target, []).append(entry)
    for target, entries in pending.items():
        for key, answer in by_model[target].resume_entries(entries, timeout_s):
            resumed.results[key] = answer
    if resumed.skipped:
        log.warning("resume left %d journaled request(s): %s", len(resumed.skipped),
                    next(iter(resumed.skipped.values())))
    return resumed


__all__ = ["Resumable", "Resumed", "open_journal", "resume_journal"]
