"""Demo step: the emulated devices generate text together with a tiny trained LLM.

The tinylm checkpoint (`examples/tinylm/`, a 1.25 M-parameter byte-level Llama trained
on the machine's license texts, so no download) is split tensor-parallel over the
demo's agents by their (emulated) memory bandwidth: a Pi-like device gets a smaller
slice of every layer. Tokens are printed as they stream in; the greedy text is then
checked against the same checkpoint run in this one process, so the demo shows the
split is exact, not just fast; then the same deployment answers one request through
the OpenAI-compatible API (`edge-runtime serve`'s app, stopped right after). Uses only
the public SDK (`Cluster.deploy_llm`) and the serve package.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from edge_runtime.demo.render import Column, fmt_bytes, fmt_ms
from edge_runtime.demo.steps import DemoContext, StepFailed

log = logging.getLogger(__name__)

PROMPT = "Permission is hereby granted"
NEW_TOKENS = 40
"""Enough for a readable phrase; ~1 s on emulated devices, keeping the demo under a minute."""
MAX_CONTEXT = 128

_PACKAGE = Path(__file__).resolve().parents[1]
SEARCH_PATH = (
    _PACKAGE / "assets" / "tinylm",
    _PACKAGE.parent / "examples" / "tinylm" / "checkpoint",
)


def find_checkpoint() -> Path:
    for candidate in SEARCH_PATH:
        if (candidate / "config.json").is_file():
            return candidate
    raise StepFailed(
        "cannot find the tinylm checkpoint (looked in "
        + ", ".join(str(c) for c in SEARCH_PATH)
        + "); build it with `python examples/tinylm/train.py`"
    )


class GenerateText:
    """Deploy tinylm over every agent, stream a greedy continuation, verify it."""

    title = "Generate text with a tiny LLM"

    def run(self, ctx: DemoContext) -> None:
        from edge_runtime.cli.generate import summary_line
        from edge_runtime.llm import load_local_engine

        console, cluster = ctx.console, ctx.cluster
        if cluster is None:
            raise StepFailed("no cluster: the cluster step must run first")
        checkpoint = find_checkpoint()
        with console.progress("splitting tinylm across the devices") as line:
            llm = cluster.deploy_llm(checkpoint, max_context=MAX_CONTEXT)
            ctx.exit_stack.callback(llm.unload)
            line.done(f"deployed tinylm tensor-parallel over {len(llm.agents)} devices "
                      f"(hub {llm.hub_agent})")
        rows = []
        for name, share in zip(llm.agents, llm.plan.shares, strict=True):
            rows.append([name, str(share.n_kv_heads), str(share.n_columns),
                         str(share.n_vocab_rows), fmt_bytes(share.weight_bytes)])
        console.table([Column("device"), Column("KV heads", ">"), Column("MLP columns", ">"),
                       Column("vocab rows", ">"), Column("weights", ">")], rows)
        console.write()
        console.stream.write(f"  {console.style(PROMPT, 'bold')}")
        console.stream.flush()
        events = []
        started = time.perf_counter()
        for event in llm.generate(PROMPT, NEW_TOKENS, stream=True):
            events.append(event)
            console.stream.write(event.text.replace("\n", " "))
            console.stream.flush()
        console.write()
        wall = time.perf_counter() - started
        text = "".join(e.text for e in events)
        ttft = events[0].seconds if events else 0.0
        per_token = (events[-1].seconds - ttft) / max(1, len(events) - 1) if events else 0.0
        peaks = {name: int(st["peak_rss_bytes"]) for name, st in llm.status().items() if st}
        console.note(summary_line(ttft, per_token, len(events), peaks))
        with tempfile.TemporaryDirectory(prefix="demo-tinylm-") as cache:
            engine, runner = load_local_engine(checkpoint, cache_dir=cache,
                                               max_context=MAX_CONTEXT)
            try:
                alone = engine.generate(PROMPT, NEW_TOKENS).text
            finally:
                runner.close()
        if alone != text:
            raise StepFailed("the split model's text differs from the one-process run: "
                             f"{text!r} vs {alone!r}")
        console.ok("identical to the same checkpoint run in one process (greedy)")
        from edge_runtime.demo.serving import one_http_completion

        with console.progress("serving it over the OpenAI-compatible API") as line:
            url, answered = one_http_completion(llm, PROMPT, NEW_TOKENS)
            line.done(f"POST {url} answered (server stopped)")
        if answered != text:
            raise StepFailed(f"the HTTP answer differs from the SDK's text: {answered!r} vs "
                             f"{text!r}")
        console.ok("the HTTP answer is the same text (edge-runtime serve)")
        ctx.results["generation"] = {
            "checkpoint": str(checkpoint), "prompt": PROMPT, "text": text,
            "tokens": len(events), "ttft_ms": ttft * 1e3, "ms_per_token": per_token * 1e3,
            "wall_s": wall, "hub": llm.hub_agent, "http_url": url,
            "shares": {n: s.weight_bytes for n, s in zip(llm.agents, llm.plan.shares,
                                                         strict=True)},
            "peak_rss_bytes": peaks,
        }
        ctx.summary.append(("text generation", f"{len(events)} tokens, "
                            f"{fmt_ms(per_token)}/token over {len(llm.agents)} devices"))


__all__ = ["GenerateText", "find_checkpoint"]
