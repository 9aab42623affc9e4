"""Plain-text rendering for the demo: a title, numbered sections, aligned tables, progress.

The demo is the first thing a person sees, so its output must read well in any
terminal and in a CI log: box-drawing characters and colour on a terminal that can
show them, plain ASCII and no escape codes otherwise (a pipe, `NO_COLOR`, an
encoding without box characters). No dependency: a few dozen lines of formatting
beat pulling in a rendering library for one command.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

_UNICODE = {"h": "─", "v": "│", "tl": "┌", "tr": "┐", "bl": "└", "br": "┘",
            "t": "┬", "b": "┴", "l": "├", "r": "┤", "x": "┼", "ok": "✓", "fail": "✗",
            "dot": "·", "wait": "…", "bar": "█", "half": "▌", "title": "═"}  # fmt: skip
_ASCII = {"h": "-", "v": "|", "tl": "+", "tr": "+", "bl": "+", "br": "+",
          "t": "+", "b": "+", "l": "+", "r": "+", "x": "+", "ok": "ok", "fail": "!!",
          "dot": "-", "wait": "...", "bar": "#", "half": "#", "title": "="}  # fmt: skip

_STYLES = {"bold": "1", "dim": "2", "green": "32", "red": "31", "cyan": "36", "yellow": "33"}


@dataclass(frozen=True)
class Column:
    """One table column: header, alignment ('<' left, '>' right) and an optional style."""

    header: str
    align: str = "<"
    style: str = ""


def _can_encode(stream: TextIO, text: str) -> bool:
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


class Console:
    """Writes the demo's report to a stream; decides once about colour and box characters."""

    def __init__(
        self,
        stream: TextIO | None = None,
        color: bool | None = None,
        unicode: bool | None = None,
        width: int = 78,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.tty = tty
        self.color = (tty and "NO_COLOR" not in os.environ) if color is None else color
        if unicode is None:
            unicode = _can_encode(self.stream, "".join(_UNICODE.values()))
        self.glyph = _UNICODE if unicode else _ASCII
        self.width = width

    # -- text ---------------------------------------------------------------

    def style(self, text: str, *styles: str) -> str:
        """`text` wrapped in ANSI styles when colour is on."""
        codes = ";".join(_STYLES[s] for s in styles if s)
        return f"\x1b[{codes}m{text}\x1b[0m" if (self.color and codes) else text

    def write(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def title(self, text: str, subtitle: str = "") -> None:
        rule = self.glyph["title"] * self.width
        self.write(self.style(rule, "cyan"))
        self.write(self.style(f"  {text}", "bold"))
        if subtitle:
            self.write(self.style(f"  {subtitle}", "dim"))
        self.write(self.style(rule, "cyan"))

    def section(self, number: int, text: str) -> None:
        head = f"{self.glyph['h'] * 2} {number}. {text} "
        self.write()
        self.write(self.style(head + self.glyph["h"] * max(0, self.width - len(head)), "bold"))

    def note(self, text: str) -> None:
        """An indented, dimmed explanatory line."""
        self.write(self.style(f"  {text}", "dim"))

    def item(self, text: str) -> None:
        self.write(f"  {text}")

    def ok(self, text: str) -> None:
        self.write(f"  {self.style(self.glyph['ok'], 'green')} {text}")

    def fail(self, text: str) -> None:
        self.write(f"  {self.style(self.glyph['fail'], 'red')} {text}")

    @contextmanager
    def progress(self, text: str) -> Iterator[ProgressLine]:
        """A line that shows work under way and ends with its outcome and duration.

        On a terminal the waiting line is overwritten in place; in a log only the
        outcome line is written, so captured output stays one line per step.
        """
        line = ProgressLine(self, text)
        if self.tty:
            self.stream.write(f"  {self.style(self.glyph['wait'], 'yellow')} {text}")
            self.stream.flush()
        try:
            yield line
        except BaseException:
            line.finish(ok=False)
            raise
        line.finish(ok=True)

    # -- tables and bars ------------------------------------------------------

    def table(
        self, columns: Sequence[Column], rows: Sequence[Sequence[str]], indent: int = 2
    ) -> None:
        """An aligned table with a header rule; every cell is already a string."""
        widths = [len(c.header) for c in columns]
        for row in rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(cell))
        g, pad = self.glyph, " " * indent

        def rule(left: str, mid: str, right: str) -> str:
            return pad + left + mid.join(g["h"] * (w + 2) for w in widths) + right

        def cells(values: Sequence[str], header: bool = False) -> str:
            parts = []
            for value, column, width in zip(values, columns, widths, strict=True):
                text = f"{value:{column.align}{width}}"
                parts.append(" " + self.style(text, "bold" if header else column.style) + " ")
            return pad + g["v"] + g["v"].join(parts) + g["v"]

        self.write(rule(g["tl"], g["t"], g["tr"]))
        self.write(cells([c.header for c in columns], header=True))
        self.write(rule(g["l"], g["x"], g["r"]))
        for row in rows:
            self.write(cells(row))
        self.write(rule(g["bl"], g["b"], g["br"]))

    def bar(self, fraction: float, width: int = 20) -> str:
        """A horizontal bar of `fraction` (0..1) of `width` cells, padded to `width`."""
        fraction = min(max(fraction, 0.0), 1.0)
        cells = fraction * width
        full = int(cells)
        text = self.glyph["bar"] * full
        if cells - full >= 0.5 and full < width:
            text += self.glyph["half"]
        return text + " " * (width - len(text))


class ProgressLine:
    """Handle of one `Console.progress` line: set its final text, or mark it failed."""

    def __init__(self, console: Console, text: str) -> None:
        self.console = console
        self.text = text
        self.done_text = text
        self.started = time.perf_counter()

    def done(self, text: str) -> None:
        """What the line says once the work succeeded."""
        self.done_text = text

    def update(self, text: str) -> None:
        """Show intermediate progress (terminal only; a log gets only the outcome)."""
        if self.console.tty:
            wait = self.console.style(self.console.glyph["wait"], "yellow")
            self.console.stream.write(f"\r\x1b[2K  {wait} {text}")
            self.console.stream.flush()

    def finish(self, ok: bool) -> None:
        elapsed = time.perf_counter() - self.started
        console = self.console
        if console.tty:
            console.stream.write("\r\x1b[2K")
        mark = (
            console.style(console.glyph["ok"], "green")
            if ok
            else console.style(console.glyph["fail"], "red")
        )
        text = self.done_text if ok else self.text
        console.write(f"  {mark} {text} {console.style(f'({elapsed:.1f} s)', 'dim')}")


def fmt_ms(seconds: float) -> str:
    """Seconds as milliseconds with precision that suits the size."""
    ms = seconds * 1e3
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def fmt_bytes(count: float) -> str:
    """Bytes in decimal units (kB, MB, GB), as devices and plans report them."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"


def fmt_pct(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


__all__ = ["Column", "Console", "ProgressLine", "fmt_bytes", "fmt_ms", "fmt_pct"]
