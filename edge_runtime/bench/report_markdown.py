"""The report's text: a markdown page linking the figures, with the key numbers.

Why generated: the numbers people quote should come from one run of one command, with
the machine, the date and each suite's command beside them, so they can be reproduced
and compared; a hand-edited page drifts from its measurements.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from typing import Any

from edge_runtime.bench.report_figures import Figure, Results
from edge_runtime.bench.report_suites import Outcome


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    return (f"{platform.node()} ({platform.machine()}, {cores} cores, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()})")


def today() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return []
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def _allreduce(results: Results) -> list[str]:
    """Median µs by payload: one column per algorithm (the run's first security mode,
    the most members), then the star allreduce in each security mode."""
    rows = [r for r in results.get("allreduce", {}).get("rows", []) if "median_us" in r]
    if not rows:
        return []
    n = max(r["n"] for r in rows)
    modes = list(dict.fromkeys(str(r.get("mode", "curve")) for r in rows if r["what"] != "gloo"))
    cell: dict[tuple[int, str, str], float] = {}
    for r in rows:
        if r["n"] == n or r["what"] == "rtt":
            cell[(r["bytes"], r["what"], str(r.get("mode", "-")))] = r["median_us"]
    sizes = sorted({r["bytes"] for r in rows})
    algorithms = [w for w in dict.fromkeys(r["what"] for r in rows) if w not in ("rtt", "gloo")]

    def value(size: int, what: str, mode: str) -> str:
        found = cell.get((size, what, mode))
        return "-" if found is None else f"{found:.0f}"

    out = [f"Median µs per call, {n} members, {modes[0]}:", ""]
    out += _table(["bytes", "floor (N=2)", "gloo", *algorithms],
                  [[str(b), value(b, "rtt", modes[0]), value(b, "gloo", "-"),
                    *(value(b, a, modes[0]) for a in algorithms)] for b in sizes])
    if len(modes) > 1:
        out += [f"Star allreduce by security mode, {n} members (side by side in one run):", ""]
        out += _table(["bytes", *modes], [[str(b), *(value(b, "star", m) for m in modes)]
                                          for b in sizes])
    return out


def _pipeline(results: Results) -> list[str]:
    rows = []
    over = results.get("pipeline", {}).get("overhead")
    if over:
        rows.append(["one agent vs plain onnxruntime (CURVE)", f"{over['ratio']:.2f}×"])
        rows.append(["one agent vs plain onnxruntime (insecure)",
                     f"{over['insecure_ratio']:.2f}×"])
    for key in ("pipeline", "pipeline_3"):
        part = results.get(key, {}).get("throughput")
        if part:
            rows.append([f"{len(part['stage_devices'])} stages vs whole model on 1 agent, "
                         "requests/s", f"{part['ratio']:.2f}×"])
    exits = results.get("exits", {}).get("exits")
    if exits:
        rows.append(["early exits: mean latency lower by", f"{exits['mean_latency_speedup']:.2f}×"])
        rows.append(["early exits: accuracy change", f"{exits['accuracy_change_points']:+.2f} "
                     "points"])
    return _table(["measurement (alternating, one run each)", "ratio"], rows)


def _llm(results: Results) -> list[str]:
    rows = []
    for key in ("llm", "llm_quarter"):
        variants = results.get(key, {}).get("variants", {})
        for name, row in variants.items():
            # like with like: a window row against the resident row of the same agents
            same = next((r for r in variants.values() if r["agents"] == row["agents"]
                         and not r["streamed"] and r["weights"] == row["weights"]), None)
            vs = (f"{row['ms_per_token'] / same['ms_per_token']:.2f}×"
                  if row["streamed"] and same else "-")
            rss = " / ".join(f"{v:.0f}" for v in row["peak_rss_mib"].values())
            rows.append([key, name, f"{row['ms_per_token']:.1f}",
                         f"{row['predicted_ms_per_token']:.1f}", vs, rss])
    return _table(["run", "variant", "ms/token", "predicted", "vs resident, same agents",
                   "peak RSS MiB per agent"], rows)


def _llm_security(results: Results) -> list[str]:
    ratios = results.get("llm_security", {}).get("security", {}).get("ratios", {})
    return _table(["variant", "ms/token secure ÷ insecure", "TTFT secure ÷ insecure"],
                  [[name, f"{r['ms_per_token']:.2f}×", f"{r['ttft']:.2f}×"]
                   for name, r in ratios.items()])


def _llm_strategies(results: Results) -> list[str]:
    rows = []
    for link, strategies in results.get("llm_strategies", {}).get("links", {}).items():
        for name, row in strategies.items():
            if "measured_ms_per_token" not in row:
                rows.append([link, name, "-", "-", "-", f"cannot run: {row.get('error', '')}"
                             [:80]])
                continue
            rows.append([link, name, str(row.get("layout", "")),
                         f"{row['predicted_ms_per_token']:.1f}",
                         f"{row['measured_ms_per_token']:.1f}",
                         f"{row['measured_ms_per_token'] / row['predicted_ms_per_token']:.2f}"])
    return _table(["link", "strategy", "layout", "predicted ms/token", "measured ms/token",
                   "measured/predicted"], rows)


def _serve(results: Results) -> list[str]:
    rows = results.get("serve", {}).get("rows", [])
    return _table(["agents", "weights", "streams", "tokens/s", "ms/token", "TTFT p50 ms"],
                  [[str(r["agents"]), r["variant"], str(r["streams"]),
                    f"{r['tokens_per_s']:.1f}", f"{r['ms_per_token']:.1f}",
                    f"{r['ttft_p50_ms']:.0f}"] for r in rows])


def _faults(results: Results) -> list[str]:
    summary = results.get("faults", {}).get("summary")
    if not summary:
        return []
    detect = summary.get("median_detect_s")
    return _table(["lost", "answered twice", "wrong", "undetected", "median detection s"],
                  [[str(summary["lost"]), str(summary["duplicated"]), str(summary["wrong"]),
                    str(summary["undetected"]), "-" if detect is None else f"{detect:.2f}"]])


def _plan(results: Results) -> list[str]:
    latency = results.get("plan", {}).get("latency")
    if not latency:
        return []
    return _table(["cost model", "median measured/predicted", "worst"],
                  [["default", f"{latency['median_ratio_default']:.2f}",
                    f"{latency['worst_ratio_default']:.2f}"],
                   ["fitted, held out", f"{latency['median_ratio_held_out']:.2f}",
                    f"{latency['worst_ratio_held_out']:.2f}"]])


NUMBERS = (("Allreduce", _allreduce), ("Pipeline", _pipeline), ("Cost model", _plan),
           ("LLM decoding", _llm), ("LLM security", _llm_security),
           ("LLM strategies", _llm_strategies), ("LLM serving", _serve), ("Faults", _faults))


def write_markdown(outcomes: Sequence[Outcome], figures: Sequence[Figure], command: str,
                   seconds: float, stamp_machine: str, stamp_date: str) -> str:
    results: dict[str, dict[str, Any]] = {o.job.key: o.results for o in outcomes
                                          if o.results is not None}
    commands = {o.job.key: o.command for o in outcomes}
    lines = ["# edge-runtime benchmark report", "",
             f"Measured on {stamp_machine}, {stamp_date}, in {seconds / 60:.1f} minutes by "
             f"`{command}`. Each figure names the commands that measured it; every run's "
             "JSON is in [json/](json/). Benchmarks measure, they do not assert: compare "
             "runs of one machine, not across machines.", ""]
    if figures:
        lines += ["## Figures", ""]
        for figure in figures:
            lines += [f"### {figure.title}", "", f"![{figure.title}]({figure.file})", "",
                      figure.caption, "",
                      "Measured by: " + "; ".join(f"`{commands[k]}`" for k in figure.keys
                                                  if k in commands), ""]
    lines += ["## Key numbers", ""]
    for heading, numbers in NUMBERS:
        table = numbers(results)
        if table:
            lines += [f"### {heading}", "", *table]
    lines += ["## Runs", ""]
    lines += _table(["run", "command", "seconds", "result"],
                    [[o.job.key, f"`{o.command}`", f"{o.seconds:.0f}",
                      "ok" if o.results is not None else "failed (below)"] for o in outcomes])
    failed = [o for o in outcomes if o.results is None]
    if failed:
        lines += ["## Failed runs", ""]
        for o in failed:
            lines += [f"### {o.job.key}", "", "```", o.error.strip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


__all__ = ["machine", "today", "write_markdown"]
