"""Run an LLM layout (pipeline or hybrid) in one process: stages of worker threads.

Why: it runs exactly the stage split the agents run — each stage a tensor-parallel
group of `TensorWorker`s over its layer range (`TensorShare.layers`), the first
embedding the ids, the others taking the previous stage's hidden state, the last
holding the final norm and LM head; each layer's KV cache only in its own stage — with
an in-process collective inside a group and a plain hand-over between stages. So the
numerics of every layout are tested without sockets, as `local.LocalRunner` does for
tensor parallelism, and the agents add only transport.

Memory: a stage's window is its budget less the KV cache of *its* layers and the
activation reserve (`stage_window_budget`), so a range larger than the budget streams
through the layer window from disk. Each stage converts only what it uses: its layers,
the embedding on the first stage, the final norm and LM head on the last (`slices`).

`quantize="q4"`: every stage's matrices as 4-bit kernels, as the agents load them
(`TensorWorker(quantize=..., stream_quantized=True)`: a stage whose budget cannot load
them resident streams int8 blocks through its window instead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edge_runtime.errors import MemoryBudgetError
from edge_runtime.llm.checkpoint import Checkpoint
from edge_runtime.llm.config import LlmConfig
from edge_runtime.llm.engine import BatchItem
from edge_runtime.llm.local import WorkerGroup
from edge_runtime.llm.pipeline_batches import assemble, micro_batches
from edge_runtime.llm.share_weights import stage_blocks
from edge_runtime.llm.slices import SliceSet, convert_share
from edge_runtime.llm.window import WindowStats
from edge_runtime.llm.worker import Span, TensorWorker
from partitioner.llm_layout import LlmLayout
from partitioner.tensor import ACTIVATION_RESERVE_BYTES, TensorShare


def stage_kv_bytes(config: LlmConfig, share: TensorShare, max_context: int) -> int:
    """The fp32 KV cache of the share's heads over its own layers."""
    first, end = share.layer_range(config.layers)
    return 2 * (end - first) * share.n_kv_heads * max_context * config.head_dim * 4


def stage_window_budget(config: LlmConfig, share: TensorShare, slices: SliceSet,
                        memory_budget: int | None, max_context: int,
                        slots: int = 1) -> int | None:
    """Bytes left for the stage's weight blocks under its budget (None = unlimited);
    `MemoryBudgetError` when that cannot hold the stage's largest block."""
    if memory_budget is None:
        return None
    blocks = stage_blocks(slices.blocks, share.layer_range(config.layers), config.layers)
    window = (memory_budget - slots * stage_kv_bytes(config, share, max_context)
              - ACTIVATION_RESERVE_BYTES)
    largest = max(blocks, key=lambda b: b.nbytes)
    if window < largest.nbytes:
        raise MemoryBudgetError(
            f"device {share.device}: a memory budget of {memory_budget / 1e6:.1f} MB leaves "
            f"{max(window, 0) / 1e6:.1f} MB for the weights of layers "
            f"{share.layer_range(config.layers)}, less than block {largest.name} "
            f"({largest.nbytes / 1e6:.2f} MB): raise the budget or use a shorter max_context")
    return window


class PipelineRunner:
    """A layout's stages in this process; the engine's `Runner` (`forward`, batches)."""

    def __init__(self, checkpoint: str | Path | Checkpoint, layout: LlmLayout, *,
                 cache_dir: str | Path,
                 memory_budgets: Mapping[str, int | None] | None = None,
                 max_context: int = 256, slots: int = 1,
                 micro_batches: int | None = None, quantize: str | None = None) -> None:
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint)
        self.config = ckpt.config
        self.layout = layout
        self.max_context = max_context
        self.slots = slots
        self.micro_batches = layout.micro_batches if micro_batches is None else micro_batches
        self.quantize = quantize
        budgets = dict(memory_budgets or {})
        shares = [(stage.plan, share) for stage in layout.stages for share in stage.plan.shares]
        slices = [convert_share(ckpt, share, cache_dir) for _, share in shares]
        # every budget is checked before any worker allocates its cache or reads a block
        windows = [stage_window_budget(self.config, share, s, budgets.get(share.device),
                                       max_context, slots)
                   for (_, share), s in zip(shares, slices, strict=True)]
        workers = iter([TensorWorker(self.config, s, share, max_context=max_context,
                                     window_budget_bytes=w, slots=slots, quantize=quantize,
                                     stream_quantized=True)
                        for (_, share), s, w in zip(shares, slices, windows, strict=True)])
        self.stages = [WorkerGroup(stage.plan, [next(workers) for _ in stage.plan.shares], "stage")
                       for stage in layout.stages]

    def forward(self, token_ids: Sequence[int], start: int, *,
                last_only: bool = True) -> np.ndarray:
        return self.forward_batch([BatchItem(0, tuple(token_ids), start)], last_only=last_only)

    def forward_batch(self, items: Sequence[BatchItem], *,
                      last_only: bool = True) -> np.ndarray:
        """One step for several sequences, cut into micro-batches that go through the
        stages one after another; logits in item order."""
        batches = micro_batches(items, self.micro_batches)
        outs = []
        for pieces in batches:
            spans = [Span(p.batch.slot, p.batch.token_ids,
                          np.arange(p.batch.start, p.batch.start + len(p.batch.token_ids)))
                     for p in pieces]
            x: np.ndarray | None = None
            for stage in self.stages:
                x = stage.forward(spans, x, last_only)
            assert x is not None
            outs.append(x)
        return assemble(len(items), batches, outs, last_only)

    def stats(self) -> list[WindowStats]:
        return [w.stats() for stage in self.stages for w in stage.workers]

    def close(self) -> None:
        for stage in self.stages:
            stage.close()


__all__ = ["PipelineRunner", "stage_kv_bytes", "stage_window_budget"]
