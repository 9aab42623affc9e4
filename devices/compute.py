"""Matmul throughput (fp32 and int8) and memory streaming bandwidth.

Throughput is measured through onnxruntime, the engine that will run the work,
so the planner sees what a stage will really get (a BLAS peak it cannot reach
would mislead it). int8 uses `MatMulInteger` (uint8 x int8 -> int32): it is what
dynamic quantisation produces and the CPU provider implements it (ConvInteger it
does not). If onnxruntime cannot be imported, numpy stands in and the profile
says so.

Each measurement runs for a fixed wall budget and reports a high percentile of
the per-run rates: other processes can only make a run slower, never faster, so
the fast end estimates what the device can do while the 90th percentile (rather
than the single best run) ignores timer flukes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

#: Square matmul side: 2*256^3 = 34 MFLOP per run (0.3 ms here, 2 ms on a Pi 4). Its
#: 256 KB fp32 operands fit in L2, so the figure is the cores' compute capacity, not how
#: hard neighbours thrash the shared L3 (memory-bound work is priced by mem_bandwidth_gbps).
#: At 512 (1 MB operands) this 2-core VM read 13-150 GFLOPS with memory-heavy neighbours
#: running; at 256, 73-160.
MATMUL_N = 256
#: Wall time spent timing each matmul kind (after one warm-up run).
MATMUL_BUDGET_S = 0.35
#: Streaming-read array: 128 MB is far past any edge device's last-level cache.
STREAM_BYTES = 128 * 1024 * 1024
#: Wall time spent timing the streaming read.
STREAM_BUDGET_S = 0.4
#: At least this many timed runs, even on a device too slow for the budget.
MIN_RUNS = 3


def _rate(work: float, run_once: Callable[[], object], budget_s: float) -> float:
    """Work units per second: 90th percentile over runs filling `budget_s`."""
    run_once()  # warm-up: allocation, kernel selection, page faults
    rates: list[float] = []
    start = time.perf_counter()
    while len(rates) < MIN_RUNS or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        run_once()
        elapsed = time.perf_counter() - t0
        rates.append(work / max(elapsed, 1e-9))
    return float(np.percentile(rates, 90))


def _ort_matmul_session(n: int, int8: bool, threads: int) -> Callable[[], object]:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    b: npt.NDArray[Any]
    x: npt.NDArray[Any]
    if int8:
        a_type, y_type, op = TensorProto.UINT8, TensorProto.INT32, "MatMulInteger"
        b = rng.integers(-128, 128, (n, n), dtype=np.int8)
        x = rng.integers(0, 256, (n, n), dtype=np.uint8)
    else:
        a_type, y_type, op = TensorProto.FLOAT, TensorProto.FLOAT, "MatMul"
        b = rng.standard_normal((n, n), dtype=np.float32)
        x = rng.standard_normal((n, n), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node(op, ["a", "b"], ["y"])],
        "edge_runtime_profile_matmul",
        [helper.make_tensor_value_info("a", a_type, [n, n])],
        [helper.make_tensor_value_info("y", y_type, [n, n])],
        [numpy_helper.from_array(b, "b")],
    )
    # IR 8 (the opset-17 era) rather than the installed onnx's newest IR, so older
    # onnxruntime builds on devices (e.g. 1.30 refuses IR 14) can still profile.
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feeds = {"a": x}
    return lambda: session.run(None, feeds)


def _numpy_matmul(n: int, int8: bool) -> Callable[[], object]:
    rng = np.random.default_rng(0)
    a: npt.NDArray[Any]
    b: npt.NDArray[Any]
    if int8:  # numpy has no int8 GEMM kernel; int32 is what it would run
        a = rng.integers(-128, 128, (n, n), dtype=np.int32)
        b = rng.integers(-128, 128, (n, n), dtype=np.int32)
    else:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
    return lambda: a @ b


def matmul_gflops(
    threads: int, n: int = MATMUL_N, budget_s: float = MATMUL_BUDGET_S
) -> tuple[float, float, str]:
    """(fp32 GFLOPS, int8 GOPS, engine) for an n x n matmul using `threads` threads."""
    flops = 2.0 * n**3
    try:
        fp32 = _ort_matmul_session(n, False, threads)
        int8 = _ort_matmul_session(n, True, threads)
        engine = "onnxruntime"
    except ImportError as error:
        log.warning("onnxruntime unavailable (%s); measuring matmul with numpy", error)
        fp32, int8, engine = _numpy_matmul(n, False), _numpy_matmul(n // 2, True), "numpy"
        return (
            _rate(flops, fp32, budget_s) / 1e9,
            _rate(2.0 * (n // 2) ** 3, int8, budget_s) / 1e9,
            engine,
        )
    return _rate(flops, fp32, budget_s) / 1e9, _rate(flops, int8, budget_s) / 1e9, engine


def memory_bandwidth_gbps(nbytes: int = STREAM_BYTES, budget_s: float = STREAM_BUDGET_S) -> float:
    """Streaming-read bandwidth in GB/s: a max-reduction over an array past the caches.

    `max` reads every element once and its vector loop is cheaper than the load,
    so the memory, not the ALU, bounds it (a float sum measured ~20% lower here).
    """
    array = np.ones(nbytes // 8, dtype=np.float64)
    return _rate(float(array.nbytes), array.max, budget_s) / 1e9
