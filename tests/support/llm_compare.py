"""Shared runs of the LLM engine tests: layouts, window budgets, batch checks, 4-bit triples.

The dense (`test_arch_*`) and mixture-of-experts (`test_moe_*`) tests, in process and
over agents, drive the engine the same way and differ only in what they assert about
the plan; these helpers hold the common runs so both sides check the same thing.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import pytest

import edge_runtime as er
import support.hf_checkpoints as hf
from edge_runtime.errors import CheckpointError
from edge_runtime.llm import (
    Checkpoint,
    LocalRunner,
    RelativeSpeed,
    WindowStats,
    load_local_engine,
)
from edge_runtime.llm.engine import BatchItem
from edge_runtime.llm.local import kv_cache_bytes
from partitioner.tensor import ACTIVATION_RESERVE_BYTES, TensorPlan, plan_tensor_parallel
from partitioner.tensor_plan import TensorShare

T = TypeVar("T")

# The token ids, prompt and context every LLM comparison test uses (dense and MoE alike).
IDS = (1, 5, 17, 33, 99, 150, 7, 8, 9, 10, 11, 12, 3)
PROMPT = (1, 40, 41, 42, 43)
MAX_CONTEXT = 48
LAYOUTS = {"1": [1.0], "2uneq": [2.0, 1.0], "3uneq": [3.0, 1.0, 1.5]}

# The `reference` and `greedy` fixtures (tests/conftest.py): transformers' answers.
Reference = Callable[[str, tuple[int, ...]], np.ndarray]
Greedy = Callable[[str, tuple[int, ...], int], list[int]]


def speeds(weights: Sequence[float]) -> list[RelativeSpeed]:
    """Devices dev0, dev1, ... with these relative speeds."""
    return [RelativeSpeed(f"dev{i}", w) for i, w in enumerate(weights)]


def named_plan(ckpt: Path, names: Sequence[str], weights: Sequence[float], max_context: int,
               budgets: list[int | None] | None = None) -> TensorPlan:
    """A streaming-capable tensor plan as if the named devices had these speeds."""
    c = Checkpoint(ckpt)
    devices = [RelativeSpeed(n, s) for n, s in zip(names, weights, strict=True)]
    return plan_tensor_parallel(c.config.decoder_shape(max_context), devices,
                                memory_budgets=budgets, streaming=True, model_digest=c.digest)


def two_block_budgets(probe: LocalRunner, shares: Sequence[TensorShare],
                      max_context: int) -> list[int | None]:
    """Budgets leaving each worker of a (closed) probe runner a window of two of its
    largest blocks: less than its share, so its blocks stream from disk."""
    return [ACTIVATION_RESERVE_BYTES + kv_cache_bytes(probe.config, share, max_context)
            + 2 * max(b.nbytes for b in w.blocks)
            for w, share in zip(probe.workers, shares, strict=True)]


def plan_window_budgets(ckpt: Path, plan: TensorPlan, cache: Path,
                        max_context: int) -> list[int | None]:
    """`two_block_budgets` for the workers of `plan` (probed in process)."""
    probe = LocalRunner(ckpt, cache_dir=cache, plan=plan, max_context=max_context)
    probe.close()
    return two_block_budgets(probe, plan.shares, max_context)


def q4_agents_and_local(cluster: er.LocalCluster, ckpt: Path, names: Sequence[str],
                        plan: TensorPlan, cache: Path, max_context: int,
                        ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Logits of the same 4-bit split over agents (asserted 4-bit) and in one process."""
    llm = cluster.deploy_llm(ckpt, max_context=max_context, devices=list(names), plan=plan,
                             quantize="q4")
    local = LocalRunner(ckpt, cache_dir=cache, plan=plan, max_context=max_context,
                        quantize="q4")
    try:
        got = llm.logits(list(ids))
        want = local.forward(list(ids), 0, last_only=False)
        assert all(st["quantize"] == "q4" for st in llm.status().values())
    finally:
        local.close()
        llm.unload()
    return got, want


def assert_refused_before_loading(cluster: er.LocalCluster, src: Path, dst: Path,
                                  changes: dict[str, Any], match: str,
                                  max_context: int) -> None:
    """A copy of `src` with `changes` in its config.json is refused with a CheckpointError
    matching `match`, and every agent is left available with nothing deployed."""
    bad = shutil.copytree(src, dst)
    config = json.loads((bad / "config.json").read_text())
    config.update(changes)
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=match):
        cluster.deploy_llm(bad, max_context=max_context)
    for name, status in cluster.status().items():
        assert status["available"] and status["deployments"] == {}, name


def layout_logits(ckpt: Path, cache: Path, weights: Sequence[float], max_context: int,
                  ids: Sequence[int]) -> tuple[np.ndarray, list[TensorShare]]:
    """Logits of `ids` over workers of these speeds, and the plan's shares."""
    engine, runner = load_local_engine(ckpt, cache_dir=cache, devices=speeds(weights),
                                       max_context=max_context)
    try:
        return engine.logits(list(ids)), list(runner.plan.shares)
    finally:
        runner.close()


def greedy_tokens(ckpt: Path, cache: Path, weights: Sequence[float], max_context: int,
                  prompt: Sequence[int], new_tokens: int) -> list[int]:
    """Greedy generation over workers of these speeds."""
    engine, runner = load_local_engine(ckpt, cache_dir=cache, devices=speeds(weights),
                                       max_context=max_context)
    try:
        return list(engine.generate(list(prompt), max_new_tokens=new_tokens).token_ids)
    finally:
        runner.close()


@dataclasses.dataclass(frozen=True)
class WindowRun:
    """What a run through a memory window smaller than each share gave."""

    logits: np.ndarray
    tokens: list[int]
    stats: list[WindowStats]
    shares: list[TensorShare]
    notes: list[str]


def window_run(ckpt: Path, cache: Path, weights: Sequence[float], max_context: int,
               ids: Sequence[int], prompt: Sequence[int], new_tokens: int) -> WindowRun:
    """Logits and streamed greedy tokens with budgets of two blocks per worker."""
    probe = LocalRunner(ckpt, cache_dir=cache, devices=speeds(weights), max_context=max_context)
    probe.close()
    budgets = two_block_budgets(probe, probe.plan.shares, max_context)
    engine, runner = load_local_engine(ckpt, cache_dir=cache, devices=speeds(weights),
                                       memory_budgets=budgets, max_context=max_context)
    try:
        logits = engine.logits(list(ids))
        tokens = [e.token_id for e in engine.stream(list(prompt), max_new_tokens=new_tokens)]
        stats = list(runner.stats())
        shares = list(runner.plan.shares)
    finally:
        runner.close()
    return WindowRun(logits, tokens, stats, shares, list(runner.plan.notes))


def switched_logits(ckpt: Path, cache: Path, max_context: int, ids: Sequence[int],
                    field: str, value: Any) -> np.ndarray:
    """Logits of one worker whose config field is switched to `value` (asserted to
    differ from the checkpoint's)."""
    runner = LocalRunner(ckpt, cache_dir=cache, max_context=max_context)
    try:
        worker = runner.workers[0]
        assert getattr(worker.config, field) != value
        worker.config = dataclasses.replace(worker.config, **{field: value})
        return runner.forward(list(ids), 0, last_only=False)
    finally:
        runner.close()


def assert_batch_prefill_matches(runner: LocalRunner,
                                 prompts: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Prefill all prompts in one step; each slice equals its prompt run alone (returned)."""
    want = [runner.forward(list(p), 0, last_only=False) for p in prompts]
    every = runner.forward_batch([BatchItem(i, p, 0) for i, p in enumerate(prompts)],
                                 last_only=False)
    lows = np.cumsum([0] + [len(p) for p in prompts])
    for i, w in enumerate(want):
        np.testing.assert_allclose(every[lows[i]:lows[i + 1]], w, rtol=1e-5, atol=1e-5)
    return want


def batched_decode(runner: LocalRunner, prompts: Sequence[tuple[int, ...]],
                   want: Sequence[np.ndarray]) -> tuple[list[int], np.ndarray]:
    """One decode step of every sequence together, on each prefill's greedy token."""
    nxt = [int(np.argmax(w[-1])) for w in want]
    last = runner.forward_batch([BatchItem(i, (nxt[i],), len(p)) for i, p in enumerate(prompts)])
    return nxt, last


@dataclasses.dataclass(frozen=True)
class Q4Triple(Generic[T]):
    """Logits of the 4-bit split, the fp32 split of the rounded copy and of the original."""

    got: np.ndarray
    want: np.ndarray
    unrounded: np.ndarray
    seen: T  # what `inspect` read from the 4-bit runner before it closed
    exact: LocalRunner  # the (closed) fp32 runner of the original


def q4_triple(ckpt: Checkpoint, weights: Sequence[float], max_context: int, ids: list[int],
              tmp_path: Path, rounded_checkpoint: Callable[[Path, Path, TensorPlan], Path],
              inspect: Callable[[LocalRunner], T]) -> Q4Triple[T]:
    """The 4-bit split against its rounded fp32 reference and the unrounded checkpoint."""
    plan = plan_tensor_parallel(ckpt.config.decoder_shape(max_context), speeds(weights),
                                streaming=True, model_digest=ckpt.digest)
    rounded = rounded_checkpoint(ckpt.directory, tmp_path / "rounded", plan)
    q4 = LocalRunner(ckpt, cache_dir=tmp_path / "cache", plan=plan, max_context=max_context,
                     quantize="q4")
    fp32 = LocalRunner(rounded, cache_dir=tmp_path / "cache", plan=plan,
                       max_context=max_context)
    exact = LocalRunner(ckpt, cache_dir=tmp_path / "cache", plan=plan, max_context=max_context)
    try:
        got = q4.forward(ids, 0, last_only=False)
        want = fp32.forward(ids, 0, last_only=False)
        unrounded = exact.forward(ids, 0, last_only=False)
        seen = inspect(q4)
    finally:
        for runner in (q4, fp32, exact):
            runner.close()
    return Q4Triple(got, want, unrounded, seen, exact)


def assert_q4_close(t: Q4Triple[Any]) -> None:
    """Within 0.5 x std of the rounded reference, most greedy choices equal, and the
    rounding is what the reference adds: without it the gap is several times larger."""
    spread = float(t.want.std())
    assert np.abs(t.got - t.want).max() <= 0.5 * spread
    assert (t.got.argmax(axis=1) == t.want.argmax(axis=1)).mean() >= 0.75
    assert np.abs(t.got - t.unrounded).max() > 2 * np.abs(t.got - t.want).max()


def build_deep_llama(directory: Path) -> Path:
    """A 5-layer Llama (GQA) made by transformers: room for three unequal stages."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    spec = {**hf.COMMON, "num_hidden_layers": 5}
    LlamaForCausalLM(LlamaConfig(**spec)).eval().save_pretrained(directory,
                                                                 safe_serialization=True)
    return directory
