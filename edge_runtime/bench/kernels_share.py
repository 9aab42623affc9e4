"""One share process of `edge-runtime bench kernels` (run as ``python -m`` with a JSON
argument): loads its share fused and per matrix, says "ready", waits for the go file,
then times alternated decode steps and prints one JSON line."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def main(spec: dict[str, object]) -> None:
    from edge_runtime.llm.checkpoint import Checkpoint
    from edge_runtime.llm.local import RelativeSpeed
    from edge_runtime.llm.slices import convert_share
    from edge_runtime.llm.worker import Span, TensorWorker
    from partitioner.tensor import plan_tensor_parallel

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
    print(json.dumps({"rank": rank, "fused_ms": statistics.median(times[True]) * 1e3,
                      "per_matrix_ms": statistics.median(times[False]) * 1e3,
                      "max_logit_diff": diff}), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
