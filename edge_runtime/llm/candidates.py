"""Sampling where the logits are: each share's few candidates, merged on the hub.

Why: a tensor-parallel step's logits are split by vocabulary rows across the group.
Gathering every row's full vocabulary to the hub (and shipping it on to the
coordinator) costs N-1 messages of vocab/N floats plus one of the whole vocabulary per
token — most of it for tokens no sampler can pick. A greedy row is decided by each
share's largest logit, a top-k row by each share's k largest: those few travel instead.

Exact, not approximate: each share sends every entry at least as large as its own k-th
largest (ties included). The hub puts them at their vocabulary ids in a row of -inf and
runs the engine's own `sample` on it. A share's entries below its k-th largest are below
the global k-th largest too, so the top-k filter sets them to -inf either way; the row
`sample` filters is identical bit for bit, so the token (and the generator's draw) is
the one sampling the full row gives. A row whose sampler needs the whole distribution
(temperature without top-k) makes the step gather full rows instead (`candidate_ks`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_runtime.errors import GenerationError
from edge_runtime.llm.sampling import SamplingParams

F32 = np.float32


def candidate_ks(params: Sequence[SamplingParams], vocab: int) -> list[int] | None:
    """Per row, how many of each share's largest logits decide its token (1 when greedy,
    top_k with top-k); None when some row needs its whole distribution."""
    ks: list[int] = []
    for p in params:
        if p.greedy:
            ks.append(1)
        elif 0 < p.top_k < vocab:
            ks.append(p.top_k)
        else:
            return None
    return ks


def local_candidates(local: np.ndarray, offset: int, ks: Sequence[int]) -> np.ndarray:
    """This share's candidates of each row of `local` [rows, n] (its logits columns: the
    vocabulary ids offset..offset+n-1): every entry at least as large as the row's k-th
    largest, ties and NaN included. Packed as one int32 vector (what a collective sends
    as it is): per row its count, then its values' float32 bits, then its ids."""
    if local.ndim != 2 or local.shape[0] != len(ks):
        raise GenerationError(f"{len(ks)} candidate counts for logits of shape {local.shape}")
    n = local.shape[1]
    pieces: list[np.ndarray] = []
    for row, k in zip(local, ks, strict=True):
        if n == 0:
            pieces.append(np.zeros(1, np.int32))
            continue
        k = min(k, n)
        kth = row.max() if k == 1 else np.partition(row, n - k)[n - k]
        ids = np.flatnonzero((row >= kth) | np.isnan(row))
        packed = np.empty(1 + 2 * len(ids), np.int32)
        packed[0] = len(ids)
        packed[1:1 + len(ids)] = np.ascontiguousarray(row[ids], dtype=F32).view(np.int32)
        packed[1 + len(ids):] = ids + offset
        pieces.append(packed)
    return np.concatenate(pieces)


def merge_candidates(parts: Sequence[np.ndarray], rows: int, vocab: int) -> np.ndarray:
    """[rows, vocab] float32: every share's candidates at their ids, -inf elsewhere;
    GenerationError if a part is malformed (wrong counts, ids outside the vocabulary)."""
    out = np.full((rows, vocab), -np.inf, dtype=F32)
    for rank, part in enumerate(parts):
        flat = np.asarray(part)
        if flat.ndim != 1 or flat.dtype != np.int32:
            raise GenerationError(f"member {rank} sent candidates of {flat.dtype}{flat.shape}, "
                                  "not an int32 vector")
        pos = 0
        for row in range(rows):
            if pos >= len(flat):
                raise GenerationError(f"member {rank} sent candidates for fewer than {rows} rows")
            count = int(flat[pos])
            end = pos + 1 + 2 * count
            if count < 0 or end > len(flat):
                raise GenerationError(f"member {rank} sent a bad candidate count {count}")
            ids = flat[pos + 1 + count:end]
            if count and (ids.min() < 0 or ids.max() >= vocab):
                raise GenerationError(f"member {rank} sent candidate ids outside [0, {vocab})")
            out[row, ids] = flat[pos + 1:pos + 1 + count].view(F32)
            pos = end
        if pos != len(flat):
            raise GenerationError(f"member {rank} sent candidates for more than {rows} rows")
    return out


__all__ = ["candidate_ks", "local_candidates", "merge_candidates"]
