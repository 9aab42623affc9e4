"""`bench llm --strategies`: rows of predicted against measured, auto's verdicts, tables.

Why a module of its own: the medians, errors and verdicts are pure (samples in, rows
out) and the orchestration (`llm_strategies.py`) stays about clusters and links.

Per strategy: ms/token of one stream, decode tokens/s of `STREAMS` concurrent streams
and the time to first token, each predicted → measured with the error (measured ÷
predicted − 1), and each agent's peak RSS; the gain (tokens/s of the streams × one
stream's s/token), predicted → measured, shows the batching term alone, apart from how
fast the profile says a device streams its weights. `auto` is the planner's choice for each
objective — latency (ms/token, one stream) and throughput (tokens/s, many streams) —
reported as = or ≠ the measured best for that objective; a choice measured within
`TIE_FRACTION` of the best counts as equal (the bench's noise on a shared machine).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from edge_runtime.bench.llm_strategies_measure import STREAMS, Sample

TIE_FRACTION = 0.05
OBJECTIVES = ("latency", "throughput")


def strategy_row(layout: Any, runs: Sequence[Sample], predicted_ttft_s: float) -> dict[str, Any]:
    """Medians over the rounds of one strategy's layout, against its predictions."""
    ms = statistics.median(x * 1e3 for r in runs for x in r.intervals)
    tps = statistics.median(r.tokens_per_s for r in runs)
    ttft = statistics.median(r.ttft_s for r in runs)
    predicted_ms = 1e3 * layout.predicted_s_per_token
    agents = sorted({a for r in runs for a in r.peak_rss})
    return {
        "layout": layout.strategy, "groups": [list(g) for g in layout.groups],
        "layers": [list(s.layers) for s in layout.stages],
        "micro_batches": layout.micro_batches,
        "predicted_ms_per_token": predicted_ms, "measured_ms_per_token": ms,
        "error": ms / predicted_ms - 1,
        "predicted_tokens_per_s": layout.predicted_tokens_per_s,
        "measured_tokens_per_s": tps,
        "tokens_per_s_error": tps / layout.predicted_tokens_per_s - 1,
        # tokens/s of the streams over one stream's: the batching term alone, apart
        # from how fast the profile says the device streams its weights
        "predicted_batch_gain": layout.predicted_tokens_per_s * layout.predicted_s_per_token,
        "measured_batch_gain": tps * ms / 1e3,
        "predicted_ttft_s": predicted_ttft_s, "ttft_s": ttft,
        "ttft_error": ttft / predicted_ttft_s - 1 if predicted_ttft_s > 0 else None,
        "peak_rss_mib": {a: max(r.peak_rss.get(a, 0) for r in runs) / 2**20 for a in agents},
        "deploy_s": statistics.median(r.deploy_s for r in runs),
    }


def verdict(chosen: str, rows: Mapping[str, Mapping[str, Any]], objective: str,
            reason: str) -> dict[str, Any]:
    """Whether `chosen` is the measured best for `objective` among the measured rows."""
    key = "measured_ms_per_token" if objective == "latency" else "measured_tokens_per_s"
    measured = {s: float(r[key]) for s, r in rows.items() if key in r}
    out: dict[str, Any] = {"chose": chosen, "reason": reason}
    if not measured or chosen not in measured:
        return {**out, "measured_best": None, "picked_best": False}
    if objective == "latency":
        best = min(measured, key=lambda s: measured[s])
        ok = measured[chosen] <= (1 + TIE_FRACTION) * measured[best]
    else:
        best = max(measured, key=lambda s: measured[s])
        ok = measured[chosen] >= (1 - TIE_FRACTION) * measured[best]
    return {**out, "measured_best": best, "picked_best": bool(ok)}


def _pair(predicted: float, measured: float, scale: float, digits: int) -> str:
    return (f"{predicted * scale:.{digits}f} → {measured * scale:.{digits}f} "
            f"{measured / predicted - 1:+.0%}" if predicted > 0 else
            f"– → {measured * scale:.{digits}f}")


def print_table(agents: int, links: Mapping[str, Mapping[str, Any]]) -> None:
    """One table for one agent count: a row per link and strategy, then auto's verdicts."""
    print(f"\n{agents} agent(s): predicted → measured (error); tokens/s at {STREAMS} "
          "concurrent streams; gain: those tokens/s × one stream's s/token; peak RSS MiB "
          "per agent of the layout")
    head = (f"{'link':<9} {'strategy':<9} {'layout':<30} {'ms/token':>20} {'tokens/s':>20} "
            f"{'gain':>11} {'TTFT ms':>20}  peak RSS MiB")
    print(head)
    print("-" * (len(head) + 12))
    for link, rows in links.items():
        for strategy, row in rows.items():
            if strategy == "auto":
                continue
            if "measured_ms_per_token" not in row:
                print(f"{link:<9} {strategy:<9} cannot run: {str(row.get('error', ''))[:90]}")
                continue
            layout = " | ".join(f"{'+'.join(g)}[{a}..{b - 1}]"
                                for g, (a, b) in zip(row["groups"], row["layers"], strict=True))
            rss = " / ".join(f"{v:.0f}" for v in row["peak_rss_mib"].values())
            print(f"{link:<9} {strategy:<9} {layout[:30]:<30} "
                  f"{_pair(row['predicted_ms_per_token'], row['measured_ms_per_token'], 1, 1):>20} "
                  f"{_pair(row['predicted_tokens_per_s'], row['measured_tokens_per_s'], 1, 1):>20} "
                  f"{row['predicted_batch_gain']:>5.2f}→{row['measured_batch_gain']:<5.2f} "
                  f"{_pair(row['predicted_ttft_s'], row['ttft_s'], 1e3, 0):>20}  {rss}")
        for objective, v in rows.get("auto", {}).items():
            if not isinstance(v, dict):
                continue
            if v.get("error"):
                print(f"{link:<9} auto ({objective}): cannot run: {v['error'][:80]}")
                continue
            mark = "=" if v["picked_best"] else "≠"
            other = "" if v.get("same_layout", True) else (
                f" (auto's {v['chose']} layout differs from the one measured)")
            print(f"{link:<9} auto ({objective}) chose {v['chose']} {mark} measured best "
                  f"({v['measured_best']}){other}")


__all__ = ["OBJECTIVES", "TIE_FRACTION", "print_table", "strategy_row", "verdict"]
