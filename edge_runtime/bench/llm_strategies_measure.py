"""One strategy's measurement for `bench llm --strategies`: deploy, time, read RSS, unload.

Why one layout loaded at a time: the peak RSS an agent reports (`peak_rss_bytes` in its
share's status, reset after the share loads) is then that layout's serving peak alone,
not the sum of every layout the bench holds. Rounds still interleave the strategies
(each round visits each one), so a busy machine slows each alike; the agents' shard
caches persist for the cluster's life, so a layout deployed again (next round, next
link) loads its converted slices instead of converting again.

What is timed, on the layout as `place_pipeline` deploys it (every message the agents
send for it delayed by the emulated link; the coordinator's own link emulated by the
cluster's `LinkEmulator`):

- one stream: time to first token of the prompt (the prefill, pipelined through the
  stages in chunks) and the median interval between the decoded tokens after it;
- `STREAMS` concurrent streams through the batching scheduler (`GenerationScheduler`:
  one step carries every sequence, cut into the layout's micro-batches), each on a
  prompt of at most `STREAM_PROMPT_TOKENS` tokens: each stream's decode rate (its
  tokens after the first over their time), summed.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

STREAMS = 4
# The concurrent streams' prompts (STREAMS of them, 16 … 13 tokens): only their decode is
# timed, and a short prefill keeps a slow emulated link from spending the bench's time
# carrying four long prompts through every allreduce.
STREAM_PROMPT_TOKENS = 16
# A step of a busy 2-core machine may take seconds; a layout that hangs still fails.
STEP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Sample:
    """One round of one layout."""

    ttft_s: float  # the prompt's first token, one stream
    intervals: tuple[float, ...]  # seconds between decoded tokens, one stream
    tokens_per_s: float  # decode, STREAMS streams at once, summed
    peak_rss: dict[str, int]  # agent -> serving peak RSS (bytes) while this layout ran
    deploy_s: float

    @property
    def ms_per_token(self) -> float:
        return 1e3 * statistics.median(self.intervals)


def measure_layout(cluster: Any, source: Any, layout: Any,
                   emulate: tuple[float, float] | None, prompt: list[int],
                   new_tokens: int) -> Sample:
    """Deploy `layout`, time one stream and `STREAMS` streams, read each agent's peak
    RSS from its status, unload. A failure prints the agents' logs and propagates."""
    from edge_runtime.sdk.fallback.policy import FallbackPolicy
    from edge_runtime.sdk.llm import LlmDeployment
    from edge_runtime.sdk.llm_pipeline_place import place_pipeline

    started = time.perf_counter()
    placement = place_pipeline(cluster, source, layout, emulate=emulate)
    # no failover: a layout that fails is reported, not replaced by another
    llm = LlmDeployment(cluster, source, placement, None, timeout_s=STEP_TIMEOUT_S,
                        policy=FallbackPolicy(failover=False))
    deploy_s = time.perf_counter() - started
    try:
        ttft, intervals = _one_stream(llm, prompt, new_tokens)
        rate = _many_streams(llm, prompt, new_tokens)
        # the agents' own serving peak (reset when the share loaded): as `bench llm` reads it
        rss = {name: int(st["peak_rss_bytes"]) for name, st in llm.status().items() if st}
    except Exception:
        for proc in cluster.processes:  # what the agents saw, then fail
            print(f"--- {proc.name} log ---\n{proc.tail(40)}", flush=True)
        raise
    finally:
        llm.unload()
    return Sample(ttft, tuple(intervals), rate, rss, deploy_s)


def _one_stream(llm: Any, prompt: list[int], new_tokens: int) -> tuple[float, list[float]]:
    stream = llm.generate(prompt, new_tokens, stream=True, stop=[])
    first = next(stream)
    times = [time.perf_counter()]
    for _ in stream:
        times.append(time.perf_counter())
    return float(first.seconds), [float(x) for x in np.diff(times)]


def _many_streams(llm: Any, prompt: list[int], new_tokens: int) -> float:
    """Decode tokens/s of STREAMS streams admitted together (prefill excluded)."""
    from edge_runtime.sdk.scheduler import GenerationScheduler

    scheduler = GenerationScheduler(llm).start()
    try:
        short = prompt[:STREAM_PROMPT_TOKENS]
        outs = scheduler.generate_many([short[: max(1, len(short) - k)] for k in range(STREAMS)],
                                       new_tokens, stop=[])
    finally:
        scheduler.close()
    return sum(1.0 / o.s_per_token for o in outs if o.s_per_token > 0)


__all__ = ["STEP_TIMEOUT_S", "STREAMS", "STREAM_PROMPT_TOKENS", "Sample", "measure_layout"]
