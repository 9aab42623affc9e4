"""One device's part of a layer's feed-forward: its MLP columns, or its experts.

Why experts split this way (expert parallelism): every device holds the whole router
and computes the same top-k choice for every token, so no routing decision crosses the
network; each then runs only its own experts (`TensorShare.experts`) on the tokens
routed to them, scaled by their routing weights, and the partial outputs are summed by
the allreduce that sums a dense MLP's column partials. A device with no expert a token
chose adds zeros for it.

The routing is identical on every device because its input is: the residual stream is
bit-identical across workers (the allreduce hands each the same sum), the router is
stored flat in fp32 in every weight format (`slices`), and it runs in float64, so BLAS
threading differences (agents sharing a host get fewer threads) cannot flip a near tie.
As in transformers (`Qwen3MoeTopKRouter`, `MixtralTopKRouter`): softmax over all
experts, the k largest probabilities, renormalised to sum to 1 when `norm_topk_prob`
(always for Mixtral).

Batching: tokens of several sequences are routed together, but each token's experts
and weights depend on that token alone. 4-bit shares with int8 twins for long prefill
rows (`quant.RowRoute`) pick the kernel per token: an expert sees a subset of the
step's rows, which the route cannot recognise by count, so the route is suspended
around the experts and each expert's rows are split here by the same per-token mask.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from edge_runtime.llm.config import LlmConfig
from edge_runtime.llm.kernels import GATED_ACTIVATIONS
from edge_runtime.llm.quant import Q4MatMul, RowRoute, by_rows

log = logging.getLogger(__name__)

F32 = np.float32
MatMul = Callable[[np.ndarray, Any], np.ndarray]


def route(x: np.ndarray, router: np.ndarray, config: LlmConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each token's chosen experts [T, k] and their weights [T, k] (fp32).

    `router`: the layer's router as stored in the slices, [hidden, experts] flat."""
    table = np.asarray(router, dtype=np.float64).reshape(config.hidden, config.experts)
    logits = x.astype(np.float64) @ table
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    k = config.experts_per_token
    chosen = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    weights = np.take_along_axis(probs, chosen, axis=1)
    if config.norm_topk_prob:
        weights /= weights.sum(axis=1, keepdims=True)
    return chosen, weights.astype(F32)


def expert_outputs(x: np.ndarray, weights: Mapping[str, Any], config: LlmConfig,
                   experts: tuple[int, int], mm: MatMul,
                   long_rows: np.ndarray | None = None) -> np.ndarray:
    """The sum, over this device's experts, of each expert's output on the tokens routed
    to it times their routing weight; zeros where none of its experts was chosen.
    `long_rows`: the tokens whose rows go to the int8 twins of 4-bit kernels."""
    chosen, gates = route(x, weights["router"], config)
    out = np.zeros_like(x)
    act = GATED_ACTIVATIONS[config.hidden_act]
    width = config.expert_intermediate
    for e in range(*experts):
        rows, rank = np.nonzero(chosen == e)  # a token chooses an expert at most once
        if rows.size == 0:
            continue
        long = None if long_rows is None else long_rows[rows]
        gu = _rows_mm(x[rows], weights[f"expert{e}.wgu_t"], mm, long)
        y = _rows_mm(act(gu[:, :width], gu[:, width:]), weights[f"expert{e}.wdown_t"], mm, long)
        y *= gates[rows, rank][:, None]
        out[rows] += y
    return out


def _rows_mm(h: np.ndarray, w: Any, mm: MatMul, long: np.ndarray | None) -> np.ndarray:
    """h @ w, the long rows through a 4-bit kernel's int8 twin (as its route would)."""
    if long is None or not isinstance(w, Q4MatMul) or w.twin is None:
        return mm(h, w)
    return by_rows(h, long, lambda rows: mm(rows, w), w.twin, w.shape[1])


def feed_forward(x: np.ndarray, weights: Mapping[str, Any], config: LlmConfig,
                 experts: tuple[int, int], mm: MatMul, row_route: RowRoute | None = None,
                 lengths: Sequence[int] = ()) -> np.ndarray:
    """This device's partial feed-forward output for the normalised tokens `x` [T, hidden]:
    act(x @ gate) * (x @ up) @ down over its MLP columns, or its experts' weighted sum.
    `row_route`, `lengths`: a 4-bit batching share's route and the step's span lengths."""
    if config.experts:
        long = None if row_route is None else row_route.long_rows(x.shape[0])
        if row_route is None or long is None:
            return expert_outputs(x, weights, config, experts, mm)
        row_route.begin([])  # no kernel may take an expert's subset of rows for the step's
        try:
            return expert_outputs(x, weights, config, experts, mm, long)
        finally:
            row_route.begin(lengths)
    if "wgu_t" not in weights:
        return np.zeros_like(x)
    gu = mm(x, weights["wgu_t"])
    cols = gu.shape[1] // 2
    act = GATED_ACTIVATIONS[config.hidden_act](gu[:, :cols], gu[:, cols:])
    return mm(act, weights["wdown_t"])


__all__ = ["expert_outputs", "feed_forward", "route"]
