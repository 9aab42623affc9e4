"""Chrome trace JSON (the Trace Event Format): what Perfetto and chrome://tracing open.

Why this format: it is the one every trace viewer reads, and it can carry what a
`Trace` needs to round-trip (device and lane names as process and thread names, the
clock offsets and the run's description in `otherData`), so `edge-runtime trace show`
reads back exactly what `--trace out.json` wrote. Each device is a process, each of its
activities (compute, queue, receive, ...) a thread, each span a complete ("X") event
with times in microseconds from the trace's first span.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge_runtime.errors import ConfigError
from edge_runtime.trace.clock import ClockSample
from edge_runtime.trace.model import Span, Trace

US = 1e6


def tracks(spans: list[Span]) -> list[list[Span]]:
    """`spans` (of one lane) on as few tracks as hold them without overlap.

    Why: viewers expect the complete events of one thread to nest; the requests of a
    pipeline are in flight together, so their queue waits and flights overlap, and
    each overlapping one goes on a track of its own ("queue", "queue 2", ...)."""
    out: list[list[Span]] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        for track in out:
            if track[-1].end <= span.start:
                track.append(span)
                break
        else:
            out.append([span])
    return out


def to_chrome(trace: Trace) -> dict[str, Any]:
    """`trace` as a Trace Event Format object (json.dump it to a .json file)."""
    epoch = trace.start
    events: list[dict[str, Any]] = []
    pids = {device: i + 1 for i, device in enumerate(trace.devices)}
    placed: list[tuple[Span, int, int]] = []  # span, pid, tid
    next_tid: dict[str, int] = {}
    for device, lane in trace.lanes():
        pid = pids.setdefault(device, len(pids) + 1)
        for k, track in enumerate(tracks(trace.on(device, lane))):
            tid = next_tid[device] = next_tid.get(device, 0) + 1
            name = lane if k == 0 else f"{lane} {k + 1}"
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                           "args": {"name": name}})
            events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
                           "args": {"sort_index": tid}})
            placed.extend((span, pid, tid) for span in track)
    for device, pid in pids.items():
        events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                       "args": {"name": device}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                       "args": {"sort_index": pid}})
    for span, pid, tid in placed:
        args: dict[str, Any] = {"request_id": span.request_id}
        if span.peer:
            args["peer"] = span.peer
        if span.nbytes:
            args["bytes"] = span.nbytes
        events.append({
            "ph": "X", "name": span.name, "cat": span.lane,
            "ts": round((span.start - epoch) * US, 3),
            "dur": round(max(0.0, span.duration_s) * US, 3),
            "pid": pid, "tid": tid, "args": args,
        })
    other = {
        "epoch_s": epoch, "devices": list(trace.devices), "dropped": trace.dropped,
        "offsets": {d: [s.offset_s, s.rtt_s] for d, s in trace.offsets.items()},
        **{k: str(v) for k, v in trace.meta.items()},
    }
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def from_chrome(data: object) -> Trace:
    """The `Trace` a Chrome trace object holds (complete events; others are skipped)."""
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise ConfigError("not a Chrome trace: expected an object with a 'traceEvents' list "
                          "(write one with --trace FILE)")
    other = data.get("otherData") if isinstance(data.get("otherData"), dict) else {}
    assert isinstance(other, dict)
    epoch = float(other.get("epoch_s", 0.0))
    processes: dict[Any, str] = {}
    threads: dict[tuple[Any, Any], str] = {}
    for event in data["traceEvents"]:
        if isinstance(event, dict) and event.get("ph") == "M":
            name = str((event.get("args") or {}).get("name", ""))
            if event.get("name") == "process_name":
                processes[event.get("pid")] = name
            elif event.get("name") == "thread_name":
                threads[(event.get("pid"), event.get("tid"))] = name.split(" ")[0]
    spans: list[Span] = []
    for event in data["traceEvents"]:
        if not isinstance(event, dict) or event.get("ph") != "X":
            continue
        pid, tid = event.get("pid"), event.get("tid")
        args = event.get("args") if isinstance(event.get("args"), dict) else {}
        assert isinstance(args, dict)
        start = epoch + float(event.get("ts", 0.0)) / US
        spans.append(Span(
            device=processes.get(pid, str(pid)),
            lane=str(event.get("cat") or threads.get((pid, tid), tid)),
            name=str(event.get("name", "")), start=start,
            end=start + float(event.get("dur", 0.0)) / US,
            request_id=int(args.get("request_id", 0)), peer=str(args.get("peer", "")),
            nbytes=int(args.get("bytes", 0))))
    devices = [str(d) for d in other.get("devices", [])] or list(processes.values())
    offsets = {str(d): ClockSample(float(v[0]), float(v[1]))
               for d, v in dict(other.get("offsets", {})).items()}
    meta = {str(k): str(v) for k, v in other.items()
            if k not in ("epoch_s", "devices", "dropped", "offsets")}
    spans.sort(key=lambda s: (s.start, s.end))
    return Trace(tuple(spans), tuple(dict.fromkeys((*devices, *(s.device for s in spans)))),
                 offsets, meta, int(other.get("dropped", 0)))


def save(trace: Trace, path: str | Path) -> Path:
    """Write `trace` as Chrome trace JSON; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_chrome(trace)))
    return out


def load(path: str | Path) -> Trace:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"no trace file {path}; write one with --trace {path}") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read trace {path}: {error}") from None
    return from_chrome(data)


__all__ = ["from_chrome", "load", "save", "to_chrome"]
