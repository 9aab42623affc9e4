"""4-bit weights (`quantize="q4"`) for Qwen3, Gemma 2, Gemma 3 and Phi-3, in process.

On random tiny checkpoints 4-bit rounding alone moves the logits by 1-2 standard
deviations (measured; random weights are not a trained model's), so comparing with the
fp32 checkpoint says little. The reference is instead the fp32 engine on a copy of the
checkpoint whose weights are rounded exactly as the 4-bit shares round them (per block of
32 inputs, per share: a slice whose input width is not a multiple of 32 stays fp32 in
the 4-bit share, so it stays unrounded here too). What is left is the kernel's int8
activations, so the 4-bit split must compute each architecture's math (q/k norms,
sandwich norms, soft-caps, fused projections) to within the existing q4 tests'
tolerance of 0.5 x the logits' standard deviation (measured: 0.06-0.13 x, on one worker
and over three unequal ones, against 0.8-1.8 x from the unrounded checkpoint), with most
greedy choices equal (measured 0.92-1.0; asserted 0.75).
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
from edge_runtime.llm import Checkpoint, LocalRunner
from edge_runtime.llm.quant import BLOCK, dequantize_q4, quantize_q4
from partitioner.tensor import TensorPlan

IDS = [1, 5, 17, 33, 99, 150, 7, 8, 9, 10, 11, 12, 3]
MAX_CONTEXT = 48
LAYOUTS = {"1": [1.0], "3uneq": [3.0, 1.0, 1.5]}


def q4_round(w: np.ndarray) -> np.ndarray:
    """w [out, in] as the 4-bit kernel of x @ w.T holds it (unchanged if in % 32)."""
    if w.shape[1] % BLOCK or w.shape[1] == 0:
        return w
    return np.ascontiguousarray(dequantize_q4(*quantize_q4(w.T)).T)


def rounded_checkpoint(src: Path, dst: Path, plan: TensorPlan) -> Path:
    """A copy of `src` with every matrix rounded as `plan`'s 4-bit shares round it.

    q/k/v and gate/up (input: hidden) and the LM head rows are rounded whole; o_proj and
    down_proj are split by their input, so each share's columns are rounded on their own.
    Tied embeddings are untied: the embedding lookup stays fp32, the LM head is 4-bit."""
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    config = json.loads((dst / "config.json").read_text())
    if config.get("tie_word_embeddings"):
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
        config["tie_word_embeddings"] = False
    c = Checkpoint(src).config
    out: dict[str, np.ndarray] = {}
    for name, w in tensors.items():
        if w.ndim != 2 or name == "model.embed_tokens.weight":
            out[name] = w
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            w = w.copy()
            for share in plan.shares:
                if name.endswith("o_proj.weight"):
                    k0, k1 = share.kv_heads
                    lo, hi = (k * c.group_size * c.head_dim for k in (k0, k1))
                else:
                    lo, hi = share.mlp_columns
                w[:, lo:hi] = q4_round(w[:, lo:hi])
            out[name] = w
        else:
            out[name] = q4_round(w)
    save_file(out, str(dst / "model.safetensors"))
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("kind", sorted(hf.ARCH_KINDS))
def test_q4_split_computes_the_architecture(
    kind: str, layout: str, checkpoint: Callable[[str], Path], tmp_path: Path,
) -> None:
    ckpt = Checkpoint(checkpoint(kind))
    t = lc.q4_triple(ckpt, LAYOUTS[layout], MAX_CONTEXT, IDS, tmp_path, rounded_checkpoint,
                     LocalRunner.stats)
    # within 0.5 x std, most argmax equal, and the rounding is what the reference adds
    lc.assert_q4_close(t)
    stats = t.seen
    assert all(st.resident for st in stats)
    fp32_bytes = sum(b.nbytes for w in t.exact.workers for b in w.blocks)
    assert sum(st.budget_bytes for st in stats) < 0.5 * fp32_bytes  # really 4-bit
