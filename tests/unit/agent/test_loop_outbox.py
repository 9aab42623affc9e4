"""`LoopOutbox`: frames handed over by other threads reach the loop in order, and each
hand-over wakes the loop's poll through the real pipe."""

from __future__ import annotations

import select
import threading

from edge_runtime.agent.loop_outbox import LoopOutbox, Outgoing
from transports.wire import Frame


def test_frames_from_threads_arrive_in_order_and_wake_the_loop() -> None:
    outbox = LoopOutbox()
    try:
        assert not outbox
        assert list(outbox.pending()) == []
        ready, _, _ = select.select([outbox.wake_fd], [], [], 0)
        assert not ready  # nothing handed over: the loop sleeps on

        def worker(base: int) -> None:
            for i in range(200):
                outbox.put(Outgoing(b"client", None, Frame("result", request_id=base + i)))

        threads = [threading.Thread(target=worker, args=(k * 1000,)) for k in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ready, _, _ = select.select([outbox.wake_fd], [], [], 5)
        assert ready == [outbox.wake_fd]
        assert outbox
        outbox.drain_wake()
        got = [item.frame.request_id for item in outbox.pending()]
        assert sorted(got) == sorted(k * 1000 + i for k in range(3) for i in range(200))
        for k in range(3):  # each thread's frames in the order it put them
            mine = [r for r in got if r // 1000 == k]
            assert mine == sorted(mine)
        assert not outbox
        ready, _, _ = select.select([outbox.wake_fd], [], [], 0)
        assert not ready  # drained
    finally:
        outbox.close()


def test_a_late_put_after_close_neither_raises_nor_wakes() -> None:
    outbox = LoopOutbox()
    outbox.close()
    outbox.put(Outgoing(b"c", None, Frame("result")))  # a worker finishing late
    outbox.close()  # twice is fine
