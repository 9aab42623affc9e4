"""Long work in the CLI: one line on stderr that updates in place (`ProgressEvent`s).

On a terminal the line is redrawn (carriage return) and ends with a newline when its
task is done; when stderr is a file or a pipe (a log, CI), a line is written at most
every `LOG_INTERVAL_S` seconds per task and once at its end, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from edge_runtime.sdk.progress import ProgressEvent

LOG_INTERVAL_S = 5.0


def _amount(n: float, unit: str) -> str:
    if unit != "B":
        return f"{n:.0f} {unit}"
    for suffix, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {suffix}"
    return f"{n:.0f} B"


def describe(event: ProgressEvent) -> str:
    """E.g. "sending checkpoint files to agent1: 12.3 MB / 45.6 MB (27%), 5.1 MB/s, 6 s left"."""
    # bytes are sent to an agent; other units count work done on it (a conversion)
    where = f" {'to' if event.unit == 'B' else 'on'} {event.agent}" if event.agent else ""
    amount = _amount(event.done, event.unit)
    if event.total > 0:
        amount += f" / {_amount(event.total, event.unit)} ({100 * (event.fraction or 0):.0f}%)"
    rate = f"{_amount(event.rate, event.unit)}/s"
    if event.finished:
        left = f"done in {event.elapsed_s:.1f} s"
    elif event.eta_s is None:
        left = "time left unknown"
    else:
        left = f"{event.eta_s:.0f} s left"
    return f"{event.task}{where}: {amount}, {rate}, {left}"


class ProgressLine:
    """A `progress` callback that draws events on `stream` (default stderr)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._width = 0
        self._logged: dict[tuple[str, str], float] = {}

    def __call__(self, event: ProgressEvent) -> None:
        text = describe(event)
        if self._tty:
            padding = " " * max(0, self._width - len(text))
            self._width = 0 if event.finished else len(text)
            print("\r" + text + padding, end="\n" if event.finished else "",
                  file=self._stream, flush=True)
            return
        key, now = (event.task, event.agent), time.monotonic()
        last = self._logged.get(key)
        if event.finished or last is None or now - last >= LOG_INTERVAL_S:
            self._logged[key] = now
            print(text, file=self._stream, flush=True)


__all__ = ["LOG_INTERVAL_S", "ProgressLine", "describe"]
