"""`edge-runtime bench kernels`: a 4-bit share's decode step, fused segments vs per matrix.

Why a suite of its own: the fused layer segments (`llm/q4_segments.py`) change only the
agent's own compute, which the cluster benches mix with collectives and stragglers. Here
N processes (one per share of an N-way split of the checkpoint, each pinned to its own
core with `--pin`, started together so they contend for memory as agents do) each load
their share twice — fused and one kernel per matrix — and time one-token decode steps,
the two alternated step by step so a busy machine slows both alike. It prints each
share's medians, their ratio, and the largest logit difference between the two after a
prompt (both are 4-bit; the int8 activations can round a last-bit difference apart).
With `--blocks 32,64` each process also times its share's matrices as 4-bit kernels of
each block size (one row through each, alternated), with each size's largest error
relative to fp32: what a larger block saves in bytes and costs in accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shares", type=int, default=8, help="N: the split, one process "
                        "per share, all at once")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per variant")
    parser.add_argument("--pin", action="store_true", help="pin share i to core i")
    parser.add_argument("--reference", action="store_true",
                        help="the reference checkpoint (TARGETS.md); default a 2-layer one")
    parser.add_argument("--blocks", default="",
                        help="also time the share's matrices as 4-bit kernels of these block "
                        "sizes, e.g. 32,64 (inputs per scale; shares use 32)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="checkpoint and slices (default ~/.cache/edge-runtime/bench-kernels)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from edge_runtime.llm.synthetic import REFERENCE, SyntheticShape, write_synthetic_checkpoint

    shape = REFERENCE if args.reference else SyntheticShape(layers=2, vocab=4096)
    work = args.workdir or Path.home() / ".cache" / "edge-runtime" / "bench-kernels"
    ckpt = write_synthetic_checkpoint(
        work / f"synthetic-{shape.hidden}x{shape.intermediate}x{shape.layers}-v{shape.vocab}",
        shape)
    blocks = [int(b) for b in args.blocks.split(",") if b.strip()]
    cores = sorted(os.sched_getaffinity(0))
    go = work / f"go-{os.getpid()}"
    go.unlink(missing_ok=True)
    procs: list[subprocess.Popen[str]] = []
    try:
        for rank in range(args.shares):
            cmd = [sys.executable, "-m", "edge_runtime.bench.kernels_share", json.dumps(
                {"ckpt": str(ckpt), "shares": args.shares, "rank": rank, "steps": args.steps,
                 "cache": str(work / f"slices-{rank}"), "go": str(go), "blocks": blocks})]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            if args.pin:
                os.sched_setaffinity(proc.pid, {cores[rank % len(cores)]})
            procs.append(proc)
        ready = [p.stdout.readline() if p.stdout else "" for p in procs]  # each: loaded
        if not all(line.strip() == "ready" for line in ready):
            raise RuntimeError(f"a share process failed to load (its error is above): {ready}")
        go.touch()
        outputs = [p.communicate()[0].strip().splitlines() for p in procs]
        if not all(outputs) or any(p.returncode for p in procs):
            raise RuntimeError("a share process failed while timing (its error is above)")
        rows = [json.loads(lines[-1]) for lines in outputs]
    finally:  # no share process outlives the bench, whatever failed
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        go.unlink(missing_ok=True)
    print(f"\n4-bit decode step, {args.shares} shares at once"
          f"{', pinned' if args.pin else ''}, {args.steps} steps each, alternated:")
    print(f"{'share':>5}  {'fused ms':>9}  {'per-matrix ms':>13}  {'ratio':>6}  max |Δlogit|")
    for r in rows:
        print(f"{r['rank']:>5}  {r['fused_ms']:>9.3f}  {r['per_matrix_ms']:>13.3f}  "
              f"{r['fused_ms'] / r['per_matrix_ms']:>6.3f}  {r['max_logit_diff']:.2e}")
    ratio = statistics.median(r["fused_ms"] / r["per_matrix_ms"] for r in rows)
    print(f"median ratio fused ÷ per-matrix: {ratio:.3f}")
    if blocks:
        print(f"\nthe share's matrices, one row through each, by block size (÷ block {blocks[0]}):")
        for r in rows:
            by = {b: r["blocks"][str(b)] for b in blocks}
            cells = [f"{b}: {by[b]['pass_ms']:.3f} ms "
                     f"({by[b]['pass_ms'] / by[blocks[0]]['pass_ms']:.3f}×, "
                     f"rel. error {by[b]['rel_error']:.3f})" for b in blocks]
            print(f"  share {r['rank']}: " + "; ".join(cells))
    return {"shares": rows, "median_ratio": ratio, "reference": bool(args.reference),
            "pinned": bool(args.pin), "when": time.strftime("%Y-%m-%d %H:%M:%S")}


__all__ = ["add_arguments", "run"]
