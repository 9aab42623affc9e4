"""Cutting one forward step into micro-batches for a pipeline, and putting the logits back.

Why: a step sent whole through a pipeline keeps one stage busy at a time. Cut into
micro-batches sent back to back, stage k works on micro-batch i+1 while stage k+1 works
on micro-batch i. Several sequences are grouped by tokens (each sequence whole, in one
micro-batch); fewer sequences than micro-batches are cut along their tokens instead —
a long prompt's chunks follow each other through every stage in order, so each chunk
finds the keys and values of the chunks before it already in that stage's cache
(pipelined prefill). Only a sequence's final chunk gives its last-token logits.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_runtime.llm.engine import BatchItem


@dataclass(frozen=True)
class Piece:
    """A part of item `item` of the step: its ids at their start; `final` if it ends it."""

    item: int
    batch: BatchItem
    final: bool


def micro_batches(items: Sequence[BatchItem], m: int) -> list[list[Piece]]:
    """At most `m` micro-batches covering every item's tokens, in an order a pipeline may
    run them (each KV slot at most once per micro-batch, its chunks in order)."""
    if m <= 1 or len(items) == 0:
        return [[Piece(i, item, True) for i, item in enumerate(items)]]
    if len(items) >= m:
        groups: list[list[int]] = [[] for _ in range(m)]
        load = [0] * m
        for i in sorted(range(len(items)), key=lambda i: -len(items[i].token_ids)):
            g = min(range(m), key=lambda g: (load[g], g))
            groups[g].append(i)
            load[g] += len(items[i].token_ids)
        return [[Piece(i, items[i], True) for i in sorted(g)] for g in groups if g]
    per_item = math.ceil(m / len(items))
    chunked: list[list[Piece]] = []
    for i, item in enumerate(items):
        ids = item.token_ids
        n = min(per_item, len(ids))
        bounds = [round(k * len(ids) / n) for k in range(n + 1)]
        chunked.append([Piece(i, BatchItem(item.slot, tuple(ids[a:b]), item.start + a),
                              k == n - 1) for k, (a, b) in enumerate(itertools.pairwise(bounds))])
    depth = max(len(c) for c in chunked)
    return [[c[k] for c in chunked if k < len(c)] for k in range(depth)]


def assemble(n_items: int, batches: Sequence[Sequence[Piece]], logits: Sequence[np.ndarray],
             last_only: bool) -> np.ndarray:
    """The step's logits in item order from each micro-batch's logits (one row per piece
    with `last_only`, else one per token of each piece, in piece order)."""
    rows: list[list[np.ndarray]] = [[] for _ in range(n_items)]
    for pieces, out in zip(batches, logits, strict=True):
        at = 0
        for piece in pieces:
            n = 1 if last_only else len(piece.batch.token_ids)
            if piece.final or not last_only:
                rows[piece.item].append(out[at:at + n])
            at += n
    return np.concatenate([np.concatenate(r, axis=0) for r in rows], axis=0)


__all__ = ["Piece", "assemble", "micro_batches"]
