"""`LayerWindow` over real files: budget respected, read-ahead, correct bytes, errors."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import CheckpointError, MemoryBudgetError
from edge_runtime.llm import BlockSpec, LayerWindow


def make_blocks(tmp_path: Path, sizes: list[int]) -> list[BlockSpec]:
    blocks = []
    for i, n in enumerate(sizes):
        path = tmp_path / f"b{i}.bin"
        path.write_bytes(np.full(n, i, dtype=np.uint8).tobytes())
        blocks.append(BlockSpec(f"b{i}", path, n, {}))
    return blocks


def test_resident_reads_once(tmp_path: Path) -> None:
    blocks = make_blocks(tmp_path, [1000, 3000, 2000])
    with LayerWindow(blocks) as w:
        for _ in range(3):
            for i in range(3):
                with w.use(i) as buf:
                    assert buf.size == blocks[i].nbytes and (buf == i).all()
        st = w.stats()
    assert st.resident and st.loads == 3 and st.uses == 9 and st.bytes_read == 6000


def test_streaming_respects_budget_and_reloads(tmp_path: Path) -> None:
    sizes = [1000, 3000, 2000, 3000, 1500]
    blocks = make_blocks(tmp_path, sizes)
    with LayerWindow(blocks, budget_bytes=5000) as w:
        for _ in range(4):
            for i in range(len(blocks)):
                with w.use(i) as buf:
                    assert (buf == i).all()
        st = w.stats()
    assert not st.resident
    assert st.peak_loaded_bytes <= 5000
    assert st.uses == 20 and st.loads >= 20 and st.bytes_read >= 4 * sum(sizes)


def test_reads_ahead_while_a_block_is_in_use(tmp_path: Path) -> None:
    blocks = make_blocks(tmp_path, [1000] * 4)
    with LayerWindow(blocks, budget_bytes=2000) as w:
        with w.use(0):
            deadline = time.monotonic() + 5
            while w.stats().loads < 2 and time.monotonic() < deadline:
                time.sleep(0.001)
            assert w.stats().loads == 2  # block 1 arrived while block 0 was in use
            time.sleep(0.02)
            assert w.stats().loads == 2  # and nothing more: the budget is full
        with w.use(1):
            pass


def test_out_of_order_use_is_correct(tmp_path: Path) -> None:
    blocks = make_blocks(tmp_path, [100, 200, 300, 400])
    with LayerWindow(blocks, budget_bytes=500) as w:
        for i in [0, 1, 3, 2, 2, 0, 1, 2, 3]:
            with w.use(i) as buf:
                assert (buf == i).all() and buf.size == blocks[i].nbytes
        assert w.stats().peak_loaded_bytes <= 500 + 400  # at most one stale read-ahead in flight


def test_budget_smaller_than_a_block(tmp_path: Path) -> None:
    blocks = make_blocks(tmp_path, [100, 900])
    with pytest.raises(MemoryBudgetError, match="b1"):
        LayerWindow(blocks, budget_bytes=800)


@pytest.mark.parametrize("budget", [150, None])
def test_missing_file_fails_the_use_and_the_window_recovers(
    tmp_path: Path, budget: int | None
) -> None:
    blocks = make_blocks(tmp_path, [100, 100, 100])
    blocks[2].path.rename(tmp_path / "away")
    with LayerWindow(blocks, budget_bytes=budget) as w:
        with w.use(0):
            pass
        with w.use(1):
            pass
        with pytest.raises(CheckpointError, match="b2"), w.use(2):
            pass
        (tmp_path / "away").rename(blocks[2].path)
        for i in [2, 0, 1, 2]:
            with w.use(i) as buf:
                assert (buf == i).all()


def test_truncated_file(tmp_path: Path) -> None:
    blocks = make_blocks(tmp_path, [100])
    blocks[0].path.write_bytes(b"x" * 50)
    with LayerWindow(blocks) as w, pytest.raises(CheckpointError, match="ended after 50"), w.use(0):
        pass


def test_two_windows_in_threads(tmp_path: Path) -> None:
    blocks = make_blocks(tmp_path, [500] * 6)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with LayerWindow(blocks, budget_bytes=1000) as w:
                for _ in range(5):
                    for i in range(6):
                        with w.use(i) as buf:
                            assert (buf == i).all()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
