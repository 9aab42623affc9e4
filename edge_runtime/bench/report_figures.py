"""The report's figures: one function per question, suite results in, a PNG out.

Why one function per figure: each reads only the suite results it plots (the dicts the
suites' `run` return, as saved in the report's json/ folder), so a suite that failed
or was skipped costs its figures and nothing else (the function returns None). Every
figure is stamped with the machine, the date and the commands that measured it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.trace.render import pyplot

Results = Mapping[str, dict[str, Any]]
"""Job key (report_suites.jobs) -> that suite run's results."""


@dataclass(frozen=True)
class Stamp:
    """Where and when the numbers were measured; printed under every figure."""

    machine: str
    date: str
    commands: Mapping[str, str]  # job key -> the bench command it ran

    def line(self, keys: Sequence[str]) -> str:
        commands = "; ".join(self.commands[k] for k in keys if k in self.commands)
        return f"{self.machine} · {self.date} · {commands}"


@dataclass(frozen=True)
class Figure:
    """A written figure: its file name, title, the jobs it shows and what it says."""

    file: str
    title: str
    keys: tuple[str, ...]
    caption: str


def _save(fig: Any, out: Path, title: str, stamp: Stamp, keys: Sequence[str]) -> None:
    """Title on top, machine · date · commands at the bottom, then the PNG."""
    import textwrap

    plt = pyplot()
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    lines = textwrap.wrap(stamp.line(keys), int(fig.get_figwidth() * 17))
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=6, color="#616161", va="bottom")
    fig.tight_layout(rect=(0, 0.02 + 0.025 * len(lines), 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _axes(width: float = 7.5, height: float = 4.2) -> tuple[Any, Any]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(width, height))
    ax.grid(color="#eeeeee", linewidth=0.6)
    ax.set_axisbelow(True)
    return fig, ax


def _timed(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Allreduce rows with a latency, on loopback (the suite also reports choices)."""
    return [r for r in rows if "median_us" in r and r.get("link", "loopback") == "loopback"]


def _modes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The security modes of a run in its order (the first is the ratios' base)."""
    return list(dict.fromkeys(str(r.get("mode", "curve")) for r in rows
                              if r["what"] != "gloo"))


def allreduce_latency(results: Results, out: Path, stamp: Stamp) -> Figure | None:
    """Latency vs payload per algorithm, with the bare round trip (floor) and gloo."""
    rows = _timed(results.get("allreduce", {}).get("rows", []))
    if not rows:
        return None
    mode = _modes(rows)[0]
    rows = [r for r in rows if r["what"] == "gloo" or r.get("mode", "curve") == mode]
    n = max(r["n"] for r in rows if r["what"] not in ("rtt",))
    fig, ax = _axes()
    styles = {"rtt": ("floor: bare round trip (N=2)", "k", ":"),
              "gloo": ("torch.distributed gloo", "#757575", "--")}
    for what in dict.fromkeys(r["what"] for r in rows):
        chosen = sorted((r for r in rows if r["what"] == what and
                         (r["n"] == n or what == "rtt")), key=lambda r: r["bytes"])
        if not chosen:
            continue
        label, colour, line = styles.get(what, (f"{what} allreduce", None, "-"))
        ax.plot([r["bytes"] for r in chosen], [r["median_us"] for r in chosen], marker="o",
                label=label, color=colour, linestyle=line)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("payload (bytes)")
    ax.set_ylabel("median latency per call (µs)")
    ax.legend(fontsize=8)
    title = f"Allreduce latency vs payload, {n} members on loopback ({mode})"
    _save(fig, out, title, stamp, ["allreduce"])
    return Figure(out.name, title, ("allreduce",),
                  "Median of the slowest member per call; the floor is one bare ZeroMQ round "
                  "trip of the same payload, measured in the same run.")


def pipeline_throughput(results: Results, out: Path, stamp: Stamp) -> Figure | None:
    """Requests/s of the model cut into N stages on N agents, vs the whole model on one."""
    points: list[tuple[int, float, float]] = []  # devices, pipelined, whole model
    for key in ("pipeline", "pipeline_3"):
        part = results.get(key, {}).get("throughput")
        if not part:
            continue
        rates = list(part["requests_per_s"].values())
        points.append((len(part["stage_devices"]), rates[0], rates[1]))
    if not points:
        return None
    points.sort()
    fig, ax = _axes()
    xs = [p[0] for p in points]
    ax.plot([1, *xs], [points[0][2], *(p[1] for p in points)], marker="o",
            label="pipeline: N stages on N agents")
    ax.plot(xs, [p[2] for p in points], marker="s", linestyle="--", color="#757575",
            label="whole model on 1 agent (same run)")
    ax.set_xticks([1, *xs])
    ax.set_xlabel("devices (agents)")
    ax.set_ylabel("requests/s (run_many, 8 in flight)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    title = "Pipeline throughput vs devices"
    keys = ("pipeline", "pipeline_3")
    _save(fig, out, title, stamp, keys)
    return Figure(out.name, title, keys, "Each N is its own run, alternating the pipeline "
                  "and the whole-model baseline in blocks; on a machine with fewer cores than "
                  "agents, agents share cores and the pipeline cannot scale.")


def early_exit(results: Results, out: Path, stamp: Stamp) -> Figure | None:
    """Accuracy vs mean latency: calibrated exits vs always running to the last exit."""
    part = results.get("exits", {}).get("exits")
    if not part:
        return None
    fig, ax = _axes(6.5, 4.0)
    for name in ("calibrated exits", "always the last exit"):
        row = part[name]
        ax.scatter([row["mean_ms"]], [row["accuracy"] * 100], s=60, label=name)
        ax.annotate(f"{row['mean_ms']:.1f} ms, {row['accuracy'] * 100:.1f}%",
                    (row["mean_ms"], row["accuracy"] * 100), textcoords="offset points",
                    xytext=(6, -12), fontsize=8)
    ax.set_xlabel("mean latency per image (ms)")
    ax.set_ylabel("accuracy (%)")
    ax.set_xlim(left=0)
    ax.legend(fontsize=8, loc="lower right")
    title = f"Early exits: {part['mean_latency_speedup']:.2f}× lower mean latency, " \
            f"{part['accuracy_change_points']:+.2f} accuracy points"
    _save(fig, out, title, stamp, ["exits"])
    return Figure(out.name, title, ("exits",), f"The digits model on three emulated "
                  f"devices, {part['images']} test images, both variants alternating.")


def _llm_rows(results: Results) -> list[dict[str, Any]]:
    rows = []
    for key in ("llm", "llm_quarter"):
        for name, row in results.get(key, {}).get("variants", {}).items():
            rows.append({**row, "name": name, "job": key})
    return rows


def llm_agents(results: Results, out: Path, stamp: Stamp) -> Figure | None:
    """ms/token vs agents, weights resident and streamed through the window."""
    rows = [r for r in _llm_rows(results) if r["job"] == "llm"]
    if not rows:
        return None
    fig, ax = _axes()
    for streamed, label in ((False, "resident fp32"), (True, "window (streamed fp32)")):
        chosen = sorted((r for r in rows if r["streamed"] == streamed and
                         r["weights"] == "fp32"), key=lambda r: r["agents"])
        if chosen:
            ax.plot([r["agents"] for r in chosen], [r["ms_per_token"] for r in chosen],
                    marker="o", label=label)
    ax.set_xticks(sorted({r["agents"] for r in rows}))
    ax.set_xlabel("agents")
    ax.set_ylabel("ms/token (median decode step)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    title = "LLM decode time vs agents"
    _save(fig, out, title, stamp, ["llm"])
    return Figure(out.name, title, ("llm",), "A synthetic Llama-shaped checkpoint, tensor "
                  "parallel; every agent count in the same interleaved rounds.")


def llm_budget(results: Results, out: Path, stamp: Stamp) -> Figure | None:
    """ms/token and peak memory per agent vs the window's share of the weights."""
    rows = _llm_rows(results)
    n = max((r["agents"] for r in rows if r["streamed"]), default=0)
    chosen = sorted((r for r in rows if r["agents"] == n and r["weights"] == "fp32"),
                    key=lambda r: r["window_fraction"] if r["streamed"] else 1.0)
    if len(chosen) < 2:
        return None
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    xs = [r["window_fraction"] if r["streamed"] else 1.0 for r in chosen]
    left.plot(xs, [r["ms_per_token"] for r in chosen], marker="o")
    left.set_xlabel("window: share of each agent's weights held in RAM")
    left.set_ylabel("ms/token")
    left.set_ylim(bottom=0)
    left.set_title("decode time", fontsize=9)
    for i in range(len(chosen[0]["peak_rss_mib"])):
        right.plot(xs, [list(r["peak_rss_mib"].values())[i] for r in chosen], marker="o",
                   label=f"agent {i}")
    right.set_xlabel("window: share of each agent's weights held in RAM")
    right.set_ylabel("peak RSS while serving (MiB)")
    right.set_ylim(bottom=0)
    right.set_title("memory per agent", fontsize=9)
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(color="#eeeeee", linewidth=0.6)
    keys = tuple(dict.fromkeys(r["job"] for r in chosen))
    title = f"LLM on {n} agents vs memory budget (window size)"
    _save(fig, out, title, stamp, keys)
    return Figure(out.name, title, keys, "1.0 = every weight resident; smaller windows stream "
                  "the rest from disk while the current block computes. Points from different "
                  "jobs were measured in separate runs.")


def llm_streams(results: Results, out: Path, stamp: Stamp) -> Figure | None:
    """Tokens/s and ms/token vs concurrent streams (continuous batching)."""
    rows = results.get("serve", {}).get("rows", [])
    if not rows:
        return None
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for config in dict.fromkeys((r["agents"], r["variant"]) for r in rows):
        chosen = sorted((r for r in rows if (r["agents"], r["variant"]) == config),
                        key=lambda r: r["streams"])
        label = f"{config[0]} agent(s) {config[1]}"
        left.plot([r["streams"] for r in chosen], [r["tokens_per_s"] for r in chosen],
                  marker="o", label=label)
        right.plot([r["streams"] for r in chosen], [r["ms_per_token"] for r in chosen],
                   marker="o", label=label)
    left.set_ylabel("tokens/s, all streams")
    right.set_ylabel("ms/token of each stream")
    for ax in (left, right):
        ax.set_xlabel("concurrent streams")
        ax.set_ylim(bottom=0)
        ax.grid(color="#eeeeee", linewidth=0.6)
        ax.legend(fontsize=8)
    title = "LLM serving vs concurrent streams"
    _save(fig, out, title, stamp, ["serve"])
    return Figure(out.name, title, ("serve",), "Continuous batching through the scheduler; "
                  "every stream count visited in each round.")


def _strategy_rows(results: Results) -> list[dict[str, Any]]:
    """`bench llm --strategies` rows that ran: strategy, link, predicted and measured."""
    found = []
    for link, rows in results.get("llm_strategies", {}).get("links", {}).items():
        for strategy, row in rows.items():
            if "measured_ms_per_token" in row and "predicted_ms_per_token" in row:
                found.append({**row, "strategy": strategy, "link": link})
    return found


def predicted_measured(results: Results, out: Path, stamp: Stamp) -> Figure | None:
    """The cost model's predictions against measurements (stages, and LLM ms/token)."""
    stages = results.get("plan", {}).get("latency", {}).get("stages", [])
    llm = [r for r in _llm_rows(results) if r.get("predicted_ms_per_token")]
    strategies = _strategy_rows(results)
    if not stages and not llm and not strategies:
        return None
    fig, ax = _axes(6.5, 5.0)
    if stages:
        ax.scatter([s["predicted_s"] * 1e3 for s in stages],
                   [s["measured_s"] * 1e3 for s in stages], label="pipeline stage (compute)")
    if llm:
        ax.scatter([r["predicted_ms_per_token"] for r in llm],
                   [r["ms_per_token"] for r in llm], marker="s", label="LLM ms/token")
    if strategies:
        ax.scatter([r["predicted_ms_per_token"] for r in strategies],
                   [r["measured_ms_per_token"] for r in strategies], marker="^",
                   label="LLM strategy, ms/token")
        for r in strategies:
            ax.annotate(r["strategy"], (r["predicted_ms_per_token"],
                                        r["measured_ms_per_token"]),
                        textcoords="offset points", xytext=(5, 3), fontsize=7)
    values = [v for s in stages for v in (s["predicted_s"] * 1e3, s["measured_s"] * 1e3)]
    values += [v for r in llm for v in (r["predicted_ms_per_token"], r["ms_per_token"])]
    values += [v for r in strategies
               for v in (r["predicted_ms_per_token"], r["measured_ms_per_token"])]
    lo, hi = min(v for v in values if v > 0) / 2, max(values) * 2
    ax.plot([lo, hi], [lo, hi], color="#9e9e9e", linestyle="--", label="measured = predicted")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted (ms)")
    ax.set_ylabel("measured (ms)")
    ax.legend(fontsize=8)
    keys = tuple(k for k in ("plan", "llm", "llm_quarter", "llm_strategies") if k in results)
    title = "Predicted vs measured"
    _save(fig, out, title, stamp, keys)
    return Figure(out.name, title, keys, "Above the line the planner was optimistic.")


def secure_insecure(results: Results, out: Path, stamp: Stamp) -> Figure | None:
    """What CURVE costs: allreduce latency with and without it, and one agent's request."""
    rows = _timed(results.get("allreduce", {}).get("rows", []))
    rows += [{**r, "mode": "insecure"} for r in _timed(
        results.get("allreduce_insecure", {}).get("rows", []))]  # an older report's run
    modes = _modes(rows)
    overhead = results.get("pipeline", {}).get("overhead")
    llm = {name: row["ms_per_token"] for name, row in
           results.get("llm_security", {}).get("variants", {}).items()
           if name.endswith((" curve", " insecure"))}
    if len(modes) < 2 and not overhead and not llm:
        return None
    plt = pyplot()
    panels = [len(modes) >= 2, bool(llm), bool(overhead)]
    count = sum(panels)
    fig, axes = plt.subplots(1, count, figsize=(5 + 4 * (count - 1), 4.2), squeeze=False)
    left = axes[0][0] if panels[0] else None
    right = axes[0][-1] if panels[2] else None
    if llm:
        middle = axes[0][int(panels[0])]
        names = list(llm)
        labels = ["\n".join(n.replace(" agent(s)", " agents").replace(" resident", "")
                            .rsplit(" ", 1)) for n in names]  # "2 agents\ncurve"
        middle.bar(labels,
                   [llm[n] for n in names],
                   color=["#1e88e5" if n.endswith("curve") else "#90caf9" for n in names])
        middle.set_ylabel("LLM ms/token (modes alternating)")
        middle.tick_params(axis="x", labelsize=7)
    n = min((r["n"] for r in rows if r["what"] == "star"), default=2)
    for mode in modes if left is not None else []:
        chosen = sorted((r for r in rows if r["what"] == "star" and r["n"] == n
                         and r.get("mode", "curve") == mode), key=lambda r: r["bytes"])
        if chosen and left is not None:
            left.plot([r["bytes"] for r in chosen], [r["median_us"] for r in chosen],
                      marker="o", label=f"star allreduce, {n} members, {mode}")
    if left is not None:
        left.set_xscale("log", base=2)
        left.set_yscale("log")
        left.set_xlabel("payload (bytes)")
        left.set_ylabel("median µs per call")
        left.legend(fontsize=8)
    if right is not None and overhead:
        names = ["onnxruntime", "agent CURVE", "agent insecure"]
        values = [overhead["onnxruntime_median_ms"], overhead["agent_median_ms"],
                  overhead["insecure_agent_median_ms"]]
        right.bar(names, values, color=["#9e9e9e", "#1e88e5", "#90caf9"])
        right.set_ylabel("median ms per request (alternating)")
        right.tick_params(axis="x", labelsize=8)
    for ax in axes[0]:
        ax.grid(color="#eeeeee", linewidth=0.6)
    keys = tuple(k for k in ("allreduce", "allreduce_insecure", "llm_security", "pipeline")
                 if k in results)
    title = "Secure (CURVE) vs insecure"
    _save(fig, out, title, stamp, keys)
    return Figure(out.name, title, keys, "Each panel is one run with its variants side by "
                  "side: the allreduce suite's security modes (curve: CURVE sockets; sealed: "
                  "AEAD-sealed data frames; insecure: neither); LLM decoding with CURVE and "
                  "sealed collectives vs without; one agent's request vs plain onnxruntime.")


FIGURES: tuple[tuple[str, Callable[[Results, Path, Stamp], Figure | None]], ...] = (
    ("allreduce.png", allreduce_latency),
    ("pipeline_throughput.png", pipeline_throughput),
    ("early_exit.png", early_exit),
    ("llm_agents.png", llm_agents),
    ("llm_budget.png", llm_budget),
    ("llm_streams.png", llm_streams),
    ("predicted_measured.png", predicted_measured),
    ("secure_insecure.png", secure_insecure),
)


def draw_all(results: Results, folder: Path, stamp: Stamp) -> list[Figure]:
    """Every figure the results allow, written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    drawn = []
    for file, draw in FIGURES:
        figure = draw(results, folder / file, stamp)
        if figure is not None:
            drawn.append(figure)
    return drawn


__all__ = ["FIGURES", "Figure", "Results", "Stamp", "draw_all"]
