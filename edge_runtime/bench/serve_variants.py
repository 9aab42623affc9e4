"""`bench serve --variants`: the weight formats it compares, and the budget that makes
the 4-bit variant without int8 prefill twins (`q4-plain`) side by side with `q4`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_runtime.bench.llm import variant_formats

# The 4-bit variant whose budget holds no int8 prefill twins (`quant.RowRoute`).
PLAIN_Q4 = "q4-plain"


def plain_q4_budgets(cluster: Any, ckpt_dir: Path, max_context: int,
                      max_batch: int) -> list[int]:
    """Per agent: what the planner says its 4-bit share needs (plus a KV slot per
    sequence) and no more, which leaves no room for the int8 twins (they want a window
    of half the fp32 weights): the 4-bit kernel alone, to compare side by side."""
    from edge_runtime.llm import Checkpoint
    from edge_runtime.llm.local import kv_cache_bytes
    from edge_runtime.sdk.llm_plan import plan_llm

    ckpt = Checkpoint(ckpt_dir)
    names = [a.name for a in cluster.agents]
    plan = plan_llm(cluster, ckpt.config, ckpt.digest, names, [None] * len(names),
                    max_context, quantize="q4")
    return [s.peak_memory_bytes + (max_batch - 1) * kv_cache_bytes(ckpt.config, s, max_context)
            + (1 << 20) for s in plan.shares]


def formats(text: str) -> list[str | None]:
    """--variants: fp32 (None), q4 and q4-plain, in the given order."""
    from edge_runtime.errors import ConfigError

    out: list[str | None] = []
    for item in (x.strip().lower() for x in text.split(",") if x.strip()):
        fmt = PLAIN_Q4 if item == PLAIN_Q4 else variant_formats(item)[0]
        if fmt not in out:
            out.append(fmt)
    if not out:
        raise ConfigError("--variants names no weight format; use fp32, q4, q4-plain")
    return out


__all__ = ["PLAIN_Q4", "formats", "plain_q4_budgets"]
