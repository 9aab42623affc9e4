"""4-bit weights (`quantize="q4"`) for mixtures of experts, in process.

Every expert matrix becomes a 4-bit kernel of its own; the router stays fp32 (a
flipped top-k choice would change which experts run). As in test_arch_q4 the
reference is the fp32 engine on a copy of the checkpoint rounded exactly as the 4-bit
shares round it, so what is left is the kernels' int8 activations: within 0.5 x the
logits' standard deviation, most greedy choices equal, and several times closer than
the unrounded checkpoint. A batching 4-bit share (int8 twins for prefill rows, chosen
per sequence) must give each sequence what it gets alone, although each expert sees
only a subset of the step's rows.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import support.hf_checkpoints as hf
import support.llm_compare as lc
from edge_runtime.llm import Checkpoint, LocalRunner, RelativeSpeed
from edge_runtime.llm.engine import BatchItem
from edge_runtime.llm.quant import LONG_SPAN_ROWS, Q4MatMul
from partitioner.tensor import TensorPlan
from support.hf_checkpoints import MOE_KINDS

IDS = [1, 5, 17, 33, 99, 150, 7, 8, 9, 10, 11, 12, 3]
MAX_CONTEXT = 48
LAYOUTS = {"1": [1.0], "3uneq": [3.0, 1.0, 1.5]}


def q4_round(w: np.ndarray) -> np.ndarray:
    """w [out, in] as the 4-bit kernel of x @ w.T holds it."""
    from edge_runtime.llm.quant import dequantize_q4, quantize_q4

    return np.ascontiguousarray(dequantize_q4(*quantize_q4(np.ascontiguousarray(w.T))).T)


def rounded_checkpoint(src: Path, dst: Path, plan: TensorPlan) -> Path:
    """A copy of `src` with every matrix rounded as `plan`'s 4-bit shares round it:
    experts, q/k/v and the LM head whole, o_proj per share; embeddings and routers not."""
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    c = Checkpoint(src).config
    routers = {c.router_tensor(i) for i in range(c.layers)}
    out: dict[str, np.ndarray] = {}
    for name, w in tensors.items():
        if w.ndim != 2 or name == "model.embed_tokens.weight" or name in routers:
            out[name] = w
        elif name.endswith("o_proj.weight"):
            w = w.copy()
            for share in plan.shares:
                lo, hi = (k * c.group_size * c.head_dim for k in share.kv_heads)
                if hi > lo:
                    w[:, lo:hi] = q4_round(w[:, lo:hi])
            out[name] = w
        else:
            out[name] = q4_round(w)
    save_file(out, str(dst / "model.safetensors"))
    assert not json.loads((dst / "config.json").read_text())["tie_word_embeddings"]
    return dst


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("kind", sorted(MOE_KINDS))
def test_q4_experts_compute_the_mixture(kind: str, layout: str,
                                        checkpoint: Callable[[str], Path],
                                        tmp_path: Path) -> None:
    ckpt = Checkpoint(checkpoint(kind))

    def kernels_of(q4: LocalRunner) -> list[tuple[str, object]]:
        return [(name, w) for worker in q4.workers for block in worker.weights.q4.values()
                for name, w in block.items()]

    t = lc.q4_triple(ckpt, LAYOUTS[layout], MAX_CONTEXT, IDS, tmp_path, rounded_checkpoint,
                     kernels_of)
    kernels = t.seen
    experts = [w for name, w in kernels if name.startswith("expert")]
    assert len(experts) == 2 * ckpt.config.layers * ckpt.config.experts
    assert all(isinstance(w, Q4MatMul) for w in experts)  # every expert matrix is 4-bit
    assert all(isinstance(w, np.ndarray) for name, w in kernels if name == "router")
    lc.assert_q4_close(t)


@pytest.mark.parametrize("kind", sorted(hf.MOE_KINDS))
def test_a_4bit_batch_with_twins_equals_each_sequence_alone(
    kind: str, checkpoint: Callable[[str], Path], slice_cache: Path,
) -> None:
    prompts = [(1, 5, 17, 33, 99), (2, 9), (7, 7, 7, 120, 3, 44, 12)]
    assert max(len(p) for p in prompts) >= LONG_SPAN_ROWS > min(len(p) for p in prompts)
    devices = [RelativeSpeed("a", 2.0), RelativeSpeed("b", 1.0)]
    runner = LocalRunner(checkpoint(kind), cache_dir=slice_cache, devices=devices,
                         max_context=32, slots=len(prompts), quantize="q4")
    try:
        assert all(w.packed and w.packed_bytes > 0 for w in runner.workers)  # twins built
        want = lc.assert_batch_prefill_matches(runner, prompts)
        nxt, last = lc.batched_decode(runner, prompts, want)
        for i, p in enumerate(prompts):
            runner.forward_batch([BatchItem(0, p, 0)])  # its KV, alone
            alone = runner.forward_batch([BatchItem(0, (nxt[i],), len(p))])
            np.testing.assert_allclose(last[i], alone[0], rtol=1e-5, atol=1e-5)
    finally:
        runner.close()
