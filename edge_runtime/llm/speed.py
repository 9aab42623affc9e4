"""Decode speed of the in-process tensor-parallel engine, and the fraction of memory
bandwidth it reaches.

Why: decode streams every weight once per token, so the honest measure of the kernels
is bytes of weights per second against what the memory can deliver (a one-thread
streaming read, `devices.compute.memory_bandwidth_gbps`) and against bare BLAS on the
same matrices (the ceiling of any numpy kernel). Run with one BLAS thread per worker:

    OPENBLAS_NUM_THREADS=1 python -m edge_runtime.llm.speed --workers 1 2

(`edge-runtime bench llm` will add agent processes and ZeroMQ around the same engine.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.llm.local import RelativeSpeed, kv_cache_bytes, load_local_engine
from edge_runtime.llm.slices import block_arrays
from edge_runtime.llm.synthetic import write_synthetic_checkpoint
from edge_runtime.llm.window import read_block
from edge_runtime.llm.worker import TensorWorker
from partitioner.tensor import ACTIVATION_RESERVE_BYTES

log = logging.getLogger(__name__)


def blas_ceiling_s(worker: TensorWorker, repeats: int = 5) -> float:
    """Median time of bare `x @ W` over every matrix of the worker's share (read once)."""
    mats = []
    for block in worker.blocks:
        arrays = block_arrays(block, read_block(block.path, block.nbytes))
        mats += [a for name, a in arrays.items() if a.ndim == 2]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for w in mats:
            x = np.ones((1, w.shape[0]), np.float32)
            x @ w
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(
    checkpoint: Path,
    workers: int,
    cache_dir: Path,
    *,
    prompt_tokens: int = 16,
    new_tokens: int = 20,
    budget_fraction: float | None = None,
    max_context: int = 256,
    quantize: str | None = None,
) -> dict[str, Any]:
    """TTFT, median ms/token, achieved GB/s per worker, BLAS ceiling; one configuration."""
    devices = [RelativeSpeed(f"w{i}", 1.0) for i in range(workers)]
    budgets: list[int | None] | None = None
    if budget_fraction is not None:
        _probe, runner = load_local_engine(
            checkpoint, cache_dir=cache_dir, devices=devices, max_context=max_context
        )
        runner.close()
        budgets = [
            ACTIVATION_RESERVE_BYTES
            + kv_cache_bytes(runner.config, share, max_context)
            + int(budget_fraction * sum(b.nbytes for b in w.blocks))
            for share, w in zip(runner.plan.shares, runner.workers, strict=True)
        ]
    engine, runner = load_local_engine(
        checkpoint,
        cache_dir=cache_dir,
        devices=devices,
        memory_budgets=budgets,
        max_context=max_context,
        quantize=quantize,
    )
    try:
        prompt = list(range(10, 10 + prompt_tokens))
        engine.generate(prompt, 3, stop=[])  # warm-up: first reads, page faults (3 passes)
        events = list(engine.stream(prompt, new_tokens, stop=[]))
        stats = runner.stats()
        long_prompt = [10 + i % 1000 for i in range(128)]
        ttft128 = engine.generate(long_prompt, 1, stop=[]).ttft_s
        gaps = [b.seconds - a.seconds for a, b in itertools.pairwise(events)]
        token_s = statistics.median(gaps)
        # bytes each token streams: the fp32 blocks, or the 4-bit kernels' codes + scales
        share_bytes = [
            st.budget_bytes if quantize else sum(b.nbytes for b in w.blocks)
            for st, w in zip(stats, runner.workers, strict=True)
        ]
        resident_fp32 = budget_fraction is None and quantize is None
        ceiling = [blas_ceiling_s(w) for w in runner.workers] if resident_fp32 else []
    finally:
        runner.close()
    return {
        "workers": workers,
        "weights": quantize or "fp32",
        "budget_fraction": budget_fraction,
        "ttft_s": events[0].seconds,
        "ms_per_token": token_s * 1e3,
        "tokens_per_s": 1.0 / token_s,
        "share_mb": [b / 1e6 for b in share_bytes],
        "achieved_gbps": [b / token_s / 1e9 for b in share_bytes],
        "blas_ceiling_ms": [c * 1e3 for c in ceiling],
        "disk_read_mb": [s.bytes_read / 1e6 for s in stats],
        "wait_s": [s.wait_seconds for s in stats],
        "load_s": [s.load_seconds for s in stats],
        "ttft128_s": ttft128,
        "tokens_measured": len(events) + 3,
        # With a window, the disk bound per token is each worker's read time per token
        # (stats are read before the 128-token prefill).
        "disk_s_per_token": [s.load_seconds / (len(events) + 3) for s in stats],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="default: synthetic reference"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--budget-fraction", type=float, default=None, help="also run windowed")
    parser.add_argument("--q4", action="store_true", help="also run 4-bit weights (resident)")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "er-llm-speed"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from devices.compute import memory_bandwidth_gbps

    ckpt = args.checkpoint or write_synthetic_checkpoint(args.cache_dir / "reference")
    mem_bw = memory_bandwidth_gbps()
    print(f"one-thread streaming read bandwidth: {mem_bw:.1f} GB/s")
    rows = []
    print(
        f"{'workers':>7} {'weights':>7} {'budget':>6} {'TTFT128':>7} {'ms/tok':>7} "
        f"{'GB/s/worker':>12} "
        f"{'of mem':>6} {'BLAS ms':>8} {'disk ms':>8}"
    )
    for n in args.workers:
        configs: list[tuple[float | None, str | None]] = [(None, None)]
        if args.budget_fraction is not None:
            configs.append((args.budget_fraction, None))
        if args.q4:
            configs.append((None, "q4"))
        for frac, quant in configs:
            r = measure(ckpt, n, args.cache_dir / "slices", budget_fraction=frac, quantize=quant)
            r["mem_bandwidth_gbps"] = mem_bw
            rows.append(r)
            gbps = min(r["achieved_gbps"])
            blas = max(r["blas_ceiling_ms"]) if r["blas_ceiling_ms"] else float("nan")
            print(
                f"{n:>7} {quant or 'fp32':>7} {frac if frac else 'all':>6} {r['ttft128_s']:>7.3f} "
                f"{r['ms_per_token']:>7.1f} "
                f"{gbps:>12.2f} {gbps / mem_bw:>6.0%} {blas:>8.1f} "
                f"{max(r['disk_s_per_token']) * 1e3:>8.1f}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
