"""Fused 4-bit segments (`q4_segments`): the same steps as the per-matrix path.

Each graph is checked against the numpy steps it replaces, on the same 4-bit kernel
(norm, projection, bias, RoPE; norm, gate/up, SiLU, down); rows do not depend on the rows
beside them; a route sends prefill rows to the int8 twins through the numpy steps. A
whole share runs fused by default, holds no per-matrix kernel for what it fused, agrees
with the per-matrix share, and a model the graphs do not compute (per-head q/k norms)
keeps the per-matrix kernels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.llm import Checkpoint, LocalRunner
from edge_runtime.llm.config import RopeConfig
from edge_runtime.llm.kernels import Rope, rms_norm, rotate, silu_mul
from edge_runtime.llm.q4_segments import Q4AttentionIn, Q4FeedForward, SegmentShape, fusable
from edge_runtime.llm.quant import LONG_SPAN_ROWS, Q4MatMul, RowRoute

HIDDEN, HEAD_DIM, Q_HEADS, KV_HEADS, COLS = 256, 32, 4, 2, 96
EPS = 1e-5


def _case(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    width = (Q_HEADS + 2 * KV_HEADS) * HEAD_DIM
    positions = rng.integers(0, 64, rows)
    rope = Rope(HEAD_DIM, RopeConfig(theta=10000.0), 64)
    return {
        "x": rng.standard_normal((rows, HIDDEN), dtype=np.float32),
        "norm": 1.0 + 0.1 * rng.standard_normal(HIDDEN, dtype=np.float32),
        "wqkv": 0.05 * rng.standard_normal((HIDDEN, width), dtype=np.float32),
        "bqkv": 0.1 * rng.standard_normal(width, dtype=np.float32),
        "wgu": 0.05 * rng.standard_normal((HIDDEN, 2 * COLS), dtype=np.float32),
        "wdown": 0.05 * rng.standard_normal((COLS, HIDDEN), dtype=np.float32),
        "cos": rope.cos[positions], "sin": rope.sin[positions],
    }


SHAPE = SegmentShape(Q_HEADS, KV_HEADS, HEAD_DIM, EPS)


def _close(got: np.ndarray, want: np.ndarray) -> None:
    # the graph's mean of squares sums in another order than numpy's; the 4-bit kernel
    # quantises its input per block to int8, so a last-bit difference can move a code
    scale = float(np.abs(want).max())
    assert np.abs(got - want).max() <= 2e-3 * scale, np.abs(got - want).max() / scale


def test_attention_in_equals_norm_projection_bias_and_rope() -> None:
    c = _case(5)
    seg = Q4AttentionIn(c["norm"], c["wqkv"], c["bqkv"], SHAPE, None)
    qkv = Q4MatMul(c["wqkv"])(rms_norm(c["x"], c["norm"], EPS)) + c["bqkv"]
    d = HEAD_DIM
    q = qkv[:, : Q_HEADS * d].reshape(5, Q_HEADS, d)
    k = qkv[:, Q_HEADS * d: (Q_HEADS + KV_HEADS) * d].reshape(5, KV_HEADS, d)
    v = qkv[:, (Q_HEADS + KV_HEADS) * d:].reshape(5, KV_HEADS, d)
    got = seg(c["x"], c["cos"], c["sin"])
    for g, w in zip(got, (rotate(q, c["cos"], c["sin"]), rotate(k, c["cos"], c["sin"]), v),
                    strict=True):
        assert g.shape == w.shape
        _close(g, w)
    # no bias: the graph has none to add
    plain = Q4AttentionIn(c["norm"], c["wqkv"], None, SHAPE, None)
    _close(plain(c["x"], c["cos"], c["sin"])[2], v - c["bqkv"][(Q_HEADS + KV_HEADS) * d:]
           .reshape(KV_HEADS, d))


def test_feed_forward_equals_norm_gate_up_silu_down() -> None:
    c = _case(4, seed=1)
    seg = Q4FeedForward(c["norm"], c["wgu"], c["wdown"], EPS, None)
    gu = Q4MatMul(c["wgu"])(rms_norm(c["x"], c["norm"], EPS))
    want = Q4MatMul(c["wdown"])(silu_mul(gu[:, :COLS], gu[:, COLS:]))
    _close(seg(c["x"]), want)


def test_a_row_does_not_depend_on_the_rows_beside_it() -> None:
    c = _case(6, seed=2)
    att = Q4AttentionIn(c["norm"], c["wqkv"], c["bqkv"], SHAPE, None)
    mlp = Q4FeedForward(c["norm"], c["wgu"], c["wdown"], EPS, None)
    every = att(c["x"], c["cos"], c["sin"])
    ff = mlp(c["x"])
    for i in range(6):
        one = att(c["x"][i:i + 1], c["cos"][i:i + 1], c["sin"][i:i + 1])
        for a, b in zip(one, every, strict=True):
            np.testing.assert_array_equal(a[0], b[i])
        np.testing.assert_array_equal(mlp(c["x"][i:i + 1])[0], ff[i])


def test_a_route_sends_prefill_rows_to_the_twins() -> None:
    c = _case(LONG_SPAN_ROWS + 2, seed=3)
    route = RowRoute()
    att = Q4AttentionIn(c["norm"], c["wqkv"], c["bqkv"], SHAPE, route)
    mlp = Q4FeedForward(c["norm"], c["wgu"], c["wdown"], EPS, route)
    fused_att = Q4AttentionIn(c["norm"], c["wqkv"], c["bqkv"], SHAPE, None)
    fused_mlp = Q4FeedForward(c["norm"], c["wgu"], c["wdown"], EPS, None)
    assert att.twin_bytes > 0 and mlp.twin_bytes > 0 and fused_mlp.twin_bytes == 0
    route.begin([LONG_SPAN_ROWS, 1, 1])  # a prefill and two decodes
    long, short = slice(0, LONG_SPAN_ROWS), slice(LONG_SPAN_ROWS, None)
    got = mlp(c["x"])
    np.testing.assert_array_equal(got[short], fused_mlp(c["x"][short]))
    assert mlp.twins is not None
    gu = mlp.twins[0](rms_norm(c["x"][long], c["norm"], EPS))
    np.testing.assert_allclose(got[long], mlp.twins[1](silu_mul(gu[:, :COLS], gu[:, COLS:])),
                               rtol=1e-6, atol=1e-6)
    q, _, v = att(c["x"], c["cos"], c["sin"])
    fq, _, fv = fused_att(c["x"][short], c["cos"][short], c["sin"][short])
    np.testing.assert_array_equal(q[short], fq)
    np.testing.assert_array_equal(v[short], fv)
    assert att.twin is not None
    qkv = att.twin(rms_norm(c["x"][long], c["norm"], EPS)) + c["bqkv"]
    want_v = qkv[:, (Q_HEADS + KV_HEADS) * HEAD_DIM:].reshape(LONG_SPAN_ROWS, KV_HEADS,
                                                              HEAD_DIM)
    np.testing.assert_allclose(v[long], want_v, rtol=1e-6, atol=1e-6)
    # the twin is an int8 kernel, not the 4-bit one: its prefill rows differ from fused
    assert not np.array_equal(v[long], fused_att(c["x"][long], c["cos"][long],
                                                 c["sin"][long])[2])


@pytest.mark.parametrize("kind,speeds", [("llama3", [1.0]), ("llama", [1.0, 1.0]),
                                         ("llama", [1.0, 2.0])])
def test_a_fused_share_agrees_with_the_per_matrix_share(
    kind: str, speeds: list[float], checkpoint: Callable[[str], Path], slice_cache: Path,
) -> None:
    """llama3 has a qkv bias; unequal speeds give a share columns not in whole 4-bit
    blocks, whose MLP stays per-matrix (and fp32 down rows) as before."""
    from edge_runtime.llm import RelativeSpeed

    devices = [RelativeSpeed(f"dev{i}", s) for i, s in enumerate(speeds)]
    runners = {fused: LocalRunner(checkpoint(kind), cache_dir=slice_cache,
                                  devices=devices, max_context=32, quantize="q4",
                                  fused_segments=fused) for fused in (True, False)}
    try:
        for fused, runner in runners.items():
            layers = [w.weights.q4[i] for w in runner.workers
                      for i in range(2 * w.config.layers)]
            kinds = {type(v).__name__ for block in layers for v in block.values()}
            assert ("Q4AttentionIn" in kinds) == fused
            assert any(w.fused for w in runner.workers) == fused  # what status reports
            # what is fused is held once: no per-matrix qkv kernel beside the graph
            assert any("wqkv_t" in b for b in layers) != fused
        prompt = [1, 5, 17, 33, 99, 4]
        a = runners[True].forward(prompt, 0, last_only=False)
        b = runners[False].forward(prompt, 0, last_only=False)
        assert np.abs(a - b).max() <= 0.05 * np.abs(b).max()
        nxt = int(np.argmax(a[-1]))
        a1 = runners[True].forward([nxt], len(prompt))
        b1 = runners[False].forward([nxt], len(prompt))
        assert np.abs(a1 - b1).max() <= 0.05 * np.abs(b1).max()
    finally:
        for runner in runners.values():
            runner.close()


def test_only_models_the_graphs_compute_are_fused(checkpoint: Callable[[str], Path]) -> None:
    config = Checkpoint(checkpoint("llama")).config
    assert fusable(config)
    assert not fusable(dataclasses.replace(config, qk_norm=True))
    assert not fusable(dataclasses.replace(config, hidden_act="gelu_pytorch_tanh"))
    assert not fusable(dataclasses.replace(config, experts=4, experts_per_token=2))
