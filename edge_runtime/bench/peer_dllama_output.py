"""Read what distributed-llama's `dllama inference` prints into per-token figures.

Why its own module: the peer's numbers are only as good as this reading, so it is
kept apart from the processes that produce the text and tested on a real captured
output. The root prints one `🔷️ Eval` line per prefill batch and one `🔶 Pred` line
per generated token, each with that step's compute and sync time in whole ms (its
own figure, which ../shared/peers/README.md calls the one comparable to our median
ms/token), then a summary whose `ms/tok` averages are computed from µs. Whole ms are
coarse at 13 ms/token, so the arrival time of each `Pred` line (the root flushes
after every token) is kept too: the interval between consecutive lines is a
wall-clock token time measured like ours (the SDK's interval between streamed tokens).
"""

from __future__ import annotations

import re
import statistics
import struct
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.errors import EdgeRuntimeError


class PeerRunError(EdgeRuntimeError):
    """distributed-llama did not produce a usable run (no tokens, a crash, a timeout);
    the message carries the tail of its output: read it, fix the build, model or flags."""


_PRED = re.compile(r"🔶 Pred\s*(\d+) ms Sync\s*(\d+) ms \| Sent\s*(\d+) kB Recv\s*(\d+) kB")
_EVAL = re.compile(r"🔷️? Eval\s*(\d+) ms Sync\s*(\d+) ms \|.*\((\d+) tokens\)")
_SUMMARY = re.compile(r"^(Evaluation|Prediction)\s*$")
_NTOKENS = re.compile(r"^\s*nTokens:\s*(\d+)")
_TOKENIZER, _TOKENIZER_OLD, _TOK_VOCAB_SIZE = 0x567124, 0x567123, 1  # tokenizer.cpp
_MS_PER_TOK = re.compile(r"^\s*tokens/s:\s*[\d.naif]+\s*\(([\d.]+|nan|inf) ms/tok\)")


@dataclass(frozen=True)
class DllamaRun:
    """One `dllama inference` run as its root reported it.

    pred_ms/sync_ms: per generated token, whole ms (first token included);
    arrivals: perf_counter seconds at which each Pred line was read (empty when the
    text came from a file); eval_ms: prefill (Eval + Sync) per batch;
    eval_tokens/pred_tokens/mean_pred_ms: the summary (None where absent)."""

    pred_ms: tuple[int, ...]
    sync_ms: tuple[int, ...]
    eval_ms: tuple[int, ...]
    eval_tokens: int | None
    pred_tokens: int | None
    mean_pred_ms: float | None
    sent_kb_per_token: int
    recv_kb_per_token: int
    arrivals: tuple[float, ...] = ()

    def token_ms(self) -> list[int]:
        """Pred + Sync per generated token, the first one included."""
        return [p + s for p, s in zip(self.pred_ms, self.sync_ms, strict=True)]

    def median_ms(self) -> float:
        """Median Pred + Sync after the first token (the peers README's figure)."""
        after = self.token_ms()[1:]
        return float(statistics.median(after)) if after else float("nan")

    def wall_intervals_ms(self) -> list[float]:
        """Wall-clock ms between consecutive Pred lines (so the first token is excluded)."""
        return [(b - a) * 1e3 for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]

    def wall_median_ms(self) -> float:
        wall = self.wall_intervals_ms()
        return float(statistics.median(wall)) if wall else float("nan")

    def prefill_ms(self) -> int:
        return sum(self.eval_ms)


def parse_inference_output(text: str, arrivals: tuple[float, ...] = ()) -> DllamaRun:
    """Parse the stdout of `dllama inference`; `arrivals` as read (one per Pred line).

    Raises PeerRunError when no token was generated (the text's tail says why)."""
    pred: list[int] = []
    sync: list[int] = []
    evals: list[int] = []
    sent = recv = 0
    counts: dict[str, int] = {}
    mean: float | None = None
    section = ""
    for line in text.splitlines():
        if m := _PRED.search(line):
            pred.append(int(m[1]))
            sync.append(int(m[2]))
            sent, recv = int(m[3]), int(m[4])
        elif m := _EVAL.search(line):
            evals.append(int(m[1]) + int(m[2]))
        elif m := _SUMMARY.match(line):
            section = m[1]
        elif section and (m := _NTOKENS.match(line)):
            counts[section] = int(m[1])
        elif section == "Prediction" and (m := _MS_PER_TOK.match(line)):
            mean = float(m[1])
    if not pred:
        tail = "\n".join(text.strip().splitlines()[-8:])
        raise PeerRunError("distributed-llama generated no token; the end of its output:\n"
                           f"{tail or '(nothing)'}")
    if arrivals and len(arrivals) != len(pred):
        raise PeerRunError(f"{len(arrivals)} arrival times for {len(pred)} Pred lines: the "
                           "output was not read line by line as it came")
    return DllamaRun(pred_ms=tuple(pred), sync_ms=tuple(sync), eval_ms=tuple(evals),
                     eval_tokens=counts.get("Evaluation"),
                     pred_tokens=counts.get("Prediction"), mean_pred_ms=mean,
                     sent_kb_per_token=sent, recv_kb_per_token=recv,
                     arrivals=tuple(arrivals))


def tokenizer_vocab_size(path: Path) -> int | None:
    """The vocabulary size in a dllama tokenizer file's header (None where the header is
    not one this reads). Why: dllama only warns when it differs from the model's, then
    samples past the end of the logits, so the bench checks it first."""
    head = path.read_bytes()[:4096]
    if len(head) < 8:
        return None
    magic, size = struct.unpack_from("<ii", head)
    if magic == _TOKENIZER_OLD:  # vocabSize, maxTokenLength, bosId, eosId, padId
        return int(struct.unpack_from("<i", head, 4)[0])
    if magic != _TOKENIZER or size > len(head) or size < 8:
        return None
    pairs = struct.unpack_from(f"<{(size - 8) // 4}i", head, 8)
    values = dict(zip(pairs[::2], pairs[1::2], strict=False))
    return values.get(_TOK_VOCAB_SIZE)


def is_pred_line(line: bytes) -> bool:
    """Whether a raw stdout line is a generated token's line (to time its arrival)."""
    return line.lstrip().startswith("🔶 Pred".encode())


__all__ = ["DllamaRun", "PeerRunError", "is_pred_line", "parse_inference_output",
           "tokenizer_vocab_size"]
