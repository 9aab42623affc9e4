"""One share process of `edge-runtime bench kernels` (run as ``python -m`` with a JSON
argument): loads its share fused and per matrix (and, with block sizes, its matrices as
4-bit kernels of each block size), says "ready", waits for the go file, then times
alternated decode steps (and passes over the matrices) and prints one JSON line."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from edge_runtime.llm.checkpoint import Checkpoint
from edge_runtime.llm.local import RelativeSpeed
from edge_runtime.llm.quant import Q4MatMul
from edge_runtime.llm.share_weights import stage_blocks
from edge_runtime.llm.slices import SliceSet, block_arrays, convert_share
from edge_runtime.llm.window import read_block
from edge_runtime.llm.worker import Span, TensorWorker
from partitioner.tensor import TensorShare, plan_tensor_parallel


def main(spec: dict[str, object]) -> None:
    ckpt = Checkpoint(Path(str(spec["ckpt"])))
    shares, rank, steps = int(str(spec["shares"])), int(str(spec["rank"])), \
        int(str(spec["steps"]))
    plan = plan_tensor_parallel(ckpt.config.decoder_shape(256),
                                [RelativeSpeed(f"d{i}", 1.0) for i in range(shares)],
                                model_digest=ckpt.digest)
    share = plan.shares[rank]
    slices = convert_share(ckpt, share, Path(str(spec["cache"])))
    workers = {fused: TensorWorker(ckpt.config, slices, share, max_context=256,
                                   quantize="q4", fused_segments=fused)
               for fused in (True, False)}

    def alone(x: np.ndarray) -> np.ndarray:  # no peers: the collectives are identities
        return x

    prompt = [Span(0, list(range(3, 19)), list(range(16)))]
    fused_logits, per_matrix_logits = (workers[f].forward_batch(prompt, alone, alone)
                                       for f in (True, False))
    assert fused_logits is not None and per_matrix_logits is not None  # one share: the hub
    diff = float(np.abs(fused_logits - per_matrix_logits).max())
    position = {True: 16, False: 16}

    def step(fused: bool) -> float:
        t = time.perf_counter()
        workers[fused].forward_batch([Span(0, [5], [position[fused]])], alone, alone)
        position[fused] = position[fused] + 1 if position[fused] < 250 else 16
        return time.perf_counter() - t

    blocks = spec.get("blocks", [])
    assert isinstance(blocks, list)
    passes = _block_passes(slices, share, ckpt.config.layers, [int(b) for b in blocks])
    print("ready", flush=True)
    go = Path(str(spec["go"]))
    while not go.exists():
        time.sleep(0.01)
    for _ in range(20):
        step(True)
        step(False)
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(steps):
        for fused in ((True, False) if i % 2 else (False, True)):
            times[fused].append(step(fused))
    block_ms: dict[int, list[float]] = {b: [] for b in passes}
    order = list(passes)
    for i in range(steps if passes else 0):
        for b in (order if i % 2 else order[::-1]):
            block_ms[b].append(passes[b].run())
    print(json.dumps({"rank": rank, "fused_ms": statistics.median(times[True]) * 1e3,
                      "per_matrix_ms": statistics.median(times[False]) * 1e3,
                      "max_logit_diff": diff,
                      "blocks": {str(b): {"pass_ms": statistics.median(block_ms[b]) * 1e3,
                                          "rel_error": passes[b].error,
                                          "matrices": len(passes[b].kernels)}
                                 for b in passes}}), flush=True)


class _BlockPass:
    """Every matrix of the share as a 4-bit kernel of one block size, and one row
    through each: what a decode step reads, without the rest of the step."""

    def __init__(self, matrices: list[np.ndarray], block: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.kernels = [Q4MatMul(w, block=block) for w in matrices]
        self.rows = [rng.standard_normal((1, w.shape[0]), dtype=np.float32) for w in matrices]
        self.error = max(float(np.abs(k(x) - x @ w).max() / np.abs(x @ w).max())
                         for k, x, w in zip(self.kernels, self.rows, matrices, strict=True))

    def run(self) -> float:
        t = time.perf_counter()
        for kernel, row in zip(self.kernels, self.rows, strict=True):
            kernel(row)
        return time.perf_counter() - t


def _block_passes(slices: SliceSet, share: TensorShare, layers: int, blocks: list[int]
                  ) -> dict[int, _BlockPass]:
    """For each block size, the share's matrices whose input width every size divides."""
    if not blocks:
        return {}
    matrices = []
    for spec in stage_blocks(slices.blocks, share.layer_range(layers), layers):
        for name, arr in block_arrays(spec, read_block(spec.path, spec.nbytes)).items():
            if arr.ndim == 2 and name != "embedding" and all(arr.shape[0] % b == 0
                                                              for b in blocks):
                matrices.append(np.array(arr))
    return {b: _BlockPass(matrices, b, seed=len(matrices)) for b in blocks}


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
