"""Which weight blocks stay resident for good and which stream: a pure placement policy.

Why not a sliding window: every token walks the blocks in the same cyclic order, and a
window of W blocks that slides over a cyclic scan evicts each block just before it is
needed again, so it re-reads the whole share every token however large W is (LRU page
caches thrash the same way). The optimal policy for a repeating scan keeps a fixed set
of blocks resident and streams only the rest, through a small read-ahead buffer:

    bytes read per token = share - resident bytes
    resident bytes      <= budget - read-ahead buffer

The read-ahead buffer holds the streamed block being computed and the next one being
read (two of the largest streamed blocks, or more if that hides the disk better; a
budget that holds only one streams without overlap, and the prediction says so). The
streamed blocks are spread evenly through the cycle, so the compute of the resident
blocks between them hides their reads. `simulate` replays one loader thread and one
compute thread over the cycle to predict the steady-state time per token; the plan
states it next to the bytes read, and the benchmark checks the prediction.

Pure: sizes, per-block compute seconds, a read speed and a budget in; a
`ResidencyPlan` out. `LayerWindow(pinned=...)` carries a plan out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_runtime.errors import MemoryBudgetError

#: Read-ahead depths tried, in streamed blocks of the largest streamed size: two is the
#: least that overlaps (one computing, one reading); more can absorb uneven compute; one
#: (read, then compute: no overlap) only wins where nothing deeper fits.
READ_AHEAD_DEPTHS = (1, 2, 3, 4)
#: Defaults for a plan made without measured speeds (NOTES.md, development machine): a
#: sequential read at 1.5 GB/s, and decode streaming fp32 weights at 15 GB/s on one core.
DISK_READ_BPS = 1.5e9
FP32_COMPUTE_BPS = 15e9
#: int8 weights fed to `MatMulInteger` at run time, per whole decode step: one matrix
#: alone runs at 9 GB/s (2.5 ms per 23 MB at one row), but a token also quantises its
#: activations, normalises and attends: `bench llm --reference` measured 71 ms of
#: compute per token over a 375 MB int8 share (one agent; 31 ms over 187 MB for each of
#: two), i.e. 5.3-6 GB/s.
INT8_STREAM_COMPUTE_BPS = 5.5e9
#: Tokens replayed by `simulate`; the last one is the steady state (the first primes).
SIMULATED_TOKENS = 4
#: A resident 4-bit share's memory beyond its KV cache, fitted to measured loads
#: (`TensorWorker(quantize="q4")` in a fresh process, slices already converted; RSS
#: above the process's own before loading): shares of the reference checkpoint holding
#: 223, 112, 74 and 56 MiB of codes and scales settled at 347, 190, 138 and 111 MiB
#: (≈ 1.41 per byte + 32: onnxruntime keeps the initializer and its prepacked copy per
#: session; since the sessions drop their serialized model, `quant.session_of`, this
#: is 1.5 where it was 2.7), with a margin; tinylm's 0.7 MiB settled at 34 MiB, the
#: first session's own cost (the runtime's thread pool and allocators) ...
Q4_HELD_PER_BYTE = 1.5
Q4_HELD_FIXED_BYTES = 32 * 2**20
#: ... and loading peaks above the settled size by the fp32 block being converted and
#: the kernels' build copies of it: 1.94-2.06x the largest fp32 block (262, 136, 83
#: and 64 MiB over settled for largest blocks of 132, 66, 41 and 33 MiB; a fused MLP
#: segment builds its two matrices together). The peak, not the settled size, decides
#: whether a device can take a share; with these factors the rule is 5-8 % above each
#: measured peak (it was 27-33 % above).
Q4_LOAD_BLOCK_FACTOR = 2.2


@dataclass(frozen=True)
class ResidencyPlan:
    """Where every block of a share lives, and what that is predicted to cost per token."""

    resident: tuple[int, ...]  # block indices read once and kept
    streamed: tuple[int, ...]  # read again every token, in cycle order
    buffer_bytes: int  # room the streamed blocks' read-ahead may fill
    resident_bytes: int
    bytes_read_per_token: int
    compute_s_per_token: float
    read_s_per_token: float
    predicted_s_per_token: float

    @property
    def all_resident(self) -> bool:
        return not self.streamed

    def to_dict(self) -> dict[str, object]:
        return {
            "resident_blocks": len(self.resident), "streamed_blocks": len(self.streamed),
            "buffer_bytes": self.buffer_bytes, "resident_bytes": self.resident_bytes,
            "bytes_read_per_token": self.bytes_read_per_token,
            "predicted_ms_per_token": round(self.predicted_s_per_token * 1e3, 3),
        }


def simulate(sizes: Sequence[int], compute_s: Sequence[float], streamed: Sequence[int],
             buffer_bytes: int, read_bps: float, tokens: int = SIMULATED_TOKENS) -> float:
    """Steady-state seconds per token of a cyclic scan: one thread computes the blocks in
    order; one loader reads the streamed ones in order, each as soon as the buffer has
    room for it (a block holds its room from the start of its read to the end of its
    compute). Resident blocks cost compute only."""
    n = len(sizes)
    is_streamed = set(streamed)
    order = [(t, i) for t in range(tokens) for i in range(n) if i in is_streamed]
    pos = {key: k for k, key in enumerate(order)}
    done: list[float] = []  # when each read ends
    end: list[float] = []  # when each streamed block's compute ends (frees its room)
    loader = 0.0
    live = 0  # reads [live, len(done)) hold room; compute ends in order, so it only grows
    held = 0

    def schedule(k: int) -> None:
        nonlocal loader, live, held
        size = sizes[order[k][1]]
        t = loader
        while live < k and end[live] <= t:  # already released by the time the loader is free
            held -= sizes[order[live][1]]
            live += 1
        while held + size > buffer_bytes and live < k:  # wait for the oldest to be released
            t = max(t, end[live])
            held -= sizes[order[live][1]]
            live += 1
        held += size
        loader = t + size / read_bps
        done.append(loader)

    clock = 0.0
    token_end = [0.0] * tokens
    for t in range(tokens):
        for i in range(n):
            if i in is_streamed:
                k = pos[(t, i)]
                while len(done) <= k:
                    schedule(len(done))
                clock = max(clock, done[k])
                clock += compute_s[i]
                end.append(clock)
            else:
                clock += compute_s[i]
        token_end[t] = clock
    return token_end[-1] - token_end[-2] if tokens > 1 else token_end[-1]


def _spread(indices: Sequence[int], count: int) -> list[int]:
    """`count` of `indices`, evenly spaced through them."""
    if count <= 0:
        return []
    m = len(indices)
    return [indices[int((j + 0.5) * m / count)] for j in range(count)]


def _streamed_for(sizes: Sequence[int], room: int) -> list[int]:
    """The fewest bytes to stream so that the rest fits `room`: pin the largest blocks
    first (fewest bytes left to read), leave the rest to stream, spread per size."""
    by_size: dict[int, list[int]] = {}
    for i, s in enumerate(sizes):
        by_size.setdefault(s, []).append(i)
    streamed: list[int] = []
    left = room
    for size in sorted(by_size, reverse=True):
        group = by_size[size]
        keep = min(len(group), max(0, int(left // size))) if size > 0 else len(group)
        left -= keep * size
        streamed += _spread(group, len(group) - keep)
    return sorted(streamed)


def q4_resident_bytes(q4_bytes: int, fp32_bytes: int, largest_block: int) -> int:
    """Peak bytes of loading a share resident as 4-bit kernels (KV cache aside):
    `q4_bytes` of 4-bit codes and scales, `fp32_bytes` of arrays that stay fp32 (norms,
    biases, a router, matrices whose input size is not a multiple of 32), converted
    from fp32 blocks of which the largest is `largest_block` bytes. Measured factors
    above; the SDK (planning) and the engine (loading) decide with this one rule."""
    held = Q4_HELD_PER_BYTE * q4_bytes + fp32_bytes + Q4_HELD_FIXED_BYTES
    return int(held + Q4_LOAD_BLOCK_FACTOR * largest_block)


def plan_residency(sizes: Sequence[int], compute_s: Sequence[float], budget_bytes: int | None,
                   read_bps: float) -> ResidencyPlan:
    """Choose the resident and streamed blocks for a weight budget (None = unlimited).

    Candidates: no pins (a sliding window), and for every read-ahead depth in
    `READ_AHEAD_DEPTHS` and block size, as many pins as fit beside that many blocks of
    that size; the rest of the budget is the read-ahead buffer. The candidate with the
    lowest predicted time per token (`simulate`) wins, fewer bytes read on a tie.
    `MemoryBudgetError` when no placement leaves room to read even one streamed block.
    """
    if len(sizes) != len(compute_s) or not sizes:
        raise ValueError("one compute time per block, and at least one block")
    total = sum(sizes)
    compute = sum(compute_s)
    if budget_bytes is None or budget_bytes >= total:
        return ResidencyPlan(tuple(range(len(sizes))), (), 0, total, 0, compute, 0.0, compute)
    best: ResidencyPlan | None = None
    # room for pins: none (a sliding window over the whole budget), or what is left
    # beside a read-ahead of `depth` blocks of each size
    rooms = {0} | {budget_bytes - d * size for d in READ_AHEAD_DEPTHS for size in set(sizes)}
    tried: set[tuple[int, ...]] = set()
    for room in sorted(r for r in rooms if r >= 0):
        streamed = _streamed_for(sizes, room)
        if not streamed or tuple(streamed) in tried:
            continue
        tried.add(tuple(streamed))
        pinned = total - sum(sizes[i] for i in streamed)
        if pinned + max(sizes[i] for i in streamed) > budget_bytes:
            continue
        read = sum(sizes[i] for i in streamed)
        plan = ResidencyPlan(
            tuple(i for i in range(len(sizes)) if i not in set(streamed)), tuple(streamed),
            budget_bytes - pinned, pinned, read, compute, read / read_bps,
            simulate(sizes, compute_s, streamed, budget_bytes - pinned, read_bps))
        key = (plan.predicted_s_per_token, plan.bytes_read_per_token)
        if best is None or key < (best.predicted_s_per_token, best.bytes_read_per_token):
            best = plan
    if best is None:
        largest = max(sizes)
        raise MemoryBudgetError(
            f"a weight budget of {budget_bytes / 1e6:.2f} MB cannot stream this share: "
            f"the read-ahead needs room for at least its largest block "
            f"({largest / 1e6:.2f} MB; two of them to overlap reading with compute); raise "
            "the memory budget (or --memory-limit), shorten max_context, or spread the "
            "model over more devices")
    return best


__all__ = ["DISK_READ_BPS", "FP32_COMPUTE_BPS", "INT8_STREAM_COMPUTE_BPS", "Q4_HELD_FIXED_BYTES",
           "Q4_HELD_PER_BYTE", "Q4_LOAD_BLOCK_FACTOR", "READ_AHEAD_DEPTHS", "ResidencyPlan",
           "plan_residency", "q4_resident_bytes", "simulate"]
