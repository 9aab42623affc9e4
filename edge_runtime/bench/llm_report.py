"""The table and JSON of `edge-runtime bench llm`, from the samples the suite took.

Why apart from the suite (`llm.py`): the suite starts agents, deploys each variant and
times generations; this module only reduces those samples — medians per variant, the
ratios to one agent and to fp32 with the same agents, and the overlap efficiency of a
streamed window (token time ÷ max(compute+comm, disk) and ÷ their sum) — and prints
them, so the arithmetic can be read (and changed) without the cluster around it.
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

# (row name, agents, streamed through a window, quantize: None = fp32 or "q4")
Variant = tuple[str, int, bool, str | None]


def print_row(cells: list[str], widths: list[int]) -> None:
    print("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)), flush=True)



def variant_report(args: argparse.Namespace, shape: Any, size: int,
                   variants: list[Variant], samples: dict[str, list[dict[str, Any]]],
                   formats: list[str | None]) -> dict[str, Any]:
    """Print the table of `variants` (run in that order) and return the suite's JSON;
    `formats`: the `--variants` weight formats (None = fp32)."""
    rows: dict[str, dict[str, Any]] = {}
    for name, n, streamed, fmt in variants:
        runs = samples[name]
        token_s = statistics.median(x for r in runs for x in r["intervals"])
        per_agent = [r["per_agent"] for r in runs]
        agents = list(per_agent[0])
        disk = max(statistics.median(p[a]["load_s"] for p in per_agent) for a in agents)
        read = max(statistics.median(p[a]["bytes"] for p in per_agent) for a in agents)
        wait = max(statistics.median(p[a].get("wait_s", 0.0) for p in per_agent)
                   for a in agents)
        rows[name] = {
            "agents": n, "streamed": streamed, "weights": fmt or "fp32",
            # a "resident" variant under --memory-limit may stream too
            "window_streams": streamed or any(r.get("streamed") for r in runs),
            "predicted_ms_per_token": 1e3 * statistics.median(
                r["predicted_s_per_token"] for r in runs),
            "ttft_s": statistics.median(r["ttft_s"] for r in runs),
            "prefill_hub_compute_s": statistics.median(r["prefill"]["compute_s"] for r in runs),
            "prefill_hub_comm_s": statistics.median(r["prefill"]["comm_s"] for r in runs),
            "ms_per_token": token_s * 1e3, "tokens_per_s": 1.0 / token_s,
            "disk_s_per_token": disk, "bytes_read_per_token": read,
            "wait_s_per_token": wait,
            "compute_s_per_token": {a: statistics.median(p[a]["compute_s"] for p in per_agent)
                                    for a in agents},
            "comm_s_per_token": {a: statistics.median(p[a]["comm_s"] for p in per_agent)
                                 for a in agents},
            "peak_rss_mib": {a: max(r["peak_rss"][a] for r in runs) / 2**20 for a in agents},
            "cgroup_peak_mib": {a: max((r.get("cgroup_peak") or {}).get(a) or 0 for r in runs)
                                / 2**20 for a in agents},
            "oom_kills": sum(sum((r.get("oom_kills") or {}).values()) for r in runs),
            "planned_bytes_per_token": max(p[0] for p in runs[0]["plans"].values()),
            "planned_ms_per_token": 1e3 * max(p[1] for p in runs[0]["plans"].values()),
            "window_fraction": min(r["window_fraction"] for r in runs),
            "int8_streaming": any(r.get("int8") for r in runs),
        }
    def resident(n: int, weights: str) -> dict[str, Any] | None:
        return next((r for r in rows.values() if r["agents"] == n and not r["streamed"]
                     and r["weights"] == weights), None)

    mixed = len({r["weights"] for r in rows.values()}) > 1
    header = ["variant", "TTFT ms", "ms/token", "tok/s", "vs 1 agent", "disk ms/tok",
              "MB read/tok", "plan MB", "plan ms", "eff max", "eff sum",
              "peak RSS MiB per agent"]
    widths = [26, 8, 9, 7, 10, 11, 11, 8, 8, 8, 8, 30]
    limited = args.memory_limit is not None
    if limited:
        header += ["cgroup peak MiB", "OOM"]
        widths += [16, 4]
    if mixed:
        header[5:5], widths[5:5] = ["weights", "vs fp32"], [7, 7]
    print()
    print_row(header, widths)
    for name, _n, streamed, _fmt in variants:
        row = rows[name]
        streams = row["window_streams"]
        one = resident(1, row["weights"])
        ratio = row["ms_per_token"] / one["ms_per_token"] if one else float("nan")
        row["ratio_to_1_agent"] = ratio
        base = resident(row["agents"], "fp32")
        if row["weights"] != "fp32" and base is not None:
            row["ratio_to_fp32"] = row["ms_per_token"] / base["ms_per_token"]
        eff_max = eff_sum = float("nan")
        own = row["weights"] != "fp32"  # int8 streaming: no resident variant runs it
        if streamed and (base is not None or own):
            res_s, disk_s = base["ms_per_token"] / 1e3 if base else 0.0, row["disk_s_per_token"]
            if own:  # its own compute: token time less what it waited for the window
                res_s = row["ms_per_token"] / 1e3 - row["wait_s_per_token"]
            eff_max = (row["ms_per_token"] / 1e3) / max(res_s, disk_s)
            eff_sum = (row["ms_per_token"] / 1e3) / (res_s + disk_s)
            row["overlap_vs_max"], row["overlap_vs_sum"] = eff_max, eff_sum
        rss = " ".join(f"{v:.0f}" for v in row["peak_rss_mib"].values())
        cells = [name, f"{row['ttft_s'] * 1e3:.0f}", f"{row['ms_per_token']:.1f}",
                 f"{row['tokens_per_s']:.1f}", f"{ratio:.2f}x",
                 f"{row['disk_s_per_token'] * 1e3:.1f}" if streams else "-",
                 f"{row['bytes_read_per_token'] / 1e6:.0f}",
                 f"{row['planned_bytes_per_token'] / 1e6:.0f}",
                 f"{row['planned_ms_per_token']:.0f}" if row["planned_ms_per_token"] else "-",
                 f"{eff_max:.2f}" if streamed else "-", f"{eff_sum:.2f}" if streamed else "-",
                 rss]
        if limited:
            cells += [" ".join(f"{v:.0f}" for v in row["cgroup_peak_mib"].values()),
                      str(row["oom_kills"])]
        if mixed:
            vs = row.get("ratio_to_fp32")
            shown = "int8" if row["int8_streaming"] else row["weights"]
            cells[5:5] = [shown, "-" if vs is None else f"{vs:.2f}x"]
        print_row(cells, widths)
    print("\neff max = token time with prefetch / max(compute+comm, disk); eff sum = ... / "
          "(compute+comm + disk); compute+comm = the resident variant's token time (a q4 "
          "window, which may stream int8 blocks no resident variant runs: its own token "
          "time less its window waits); weights int8 = a q4 variant whose budget could not "
          "take the 4-bit kernels' loading peak, so int8 blocks streamed"
          + ("; vs fp32 = token time / fp32's with the same agents" if mixed else ""))
    return {
        "suite": "llm",
        "checkpoint": {"bytes": size, "hidden": shape.hidden, "intermediate": shape.intermediate,
                       "layers": shape.layers, "heads": shape.heads, "vocab": shape.vocab},
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "repeats": args.repeats, "threads": args.threads, "pin": args.pin,
        "budget_fraction": args.budget_fraction, "cpus": os.cpu_count(),
        "insecure": args.insecure, "weights": [f or "fp32" for f in formats],
        "variants": rows,
    }


__all__ = ["Variant", "print_row", "variant_report"]
