"""A process that journals requests in a tight loop until it is killed, for crash tests.

    python -m support.journal_writer JOURNAL PREFIX MAX_AGE_S   one writer
    python -m support.journal_writer                            a writer per stdin line

With no arguments it imports everything once, then for each line ``JOURNAL PREFIX
MAX_AGE_S`` on stdin forks a writer, prints ``pid N``, waits for it and prints
``exited N STATUS`` (-9 when SIGKILLed): a test can kill many writers in the time one
interpreter takes to start. (Run it with OPENBLAS_NUM_THREADS=1, so no thread but the
main one exists when it forks.)

Entry i (key PREFIX + six digits) goes through the life a coordinator gives it:
add → attempt → answered → delivered; every fourth (i % 4 == 3) fails instead of
being answered, and i % 4 == 2 stays ANSWERED (an answer never handed over). Even
entries carry inputs larger than `LIMITS.max_inline_bytes` (a side file), odd ones
small inline inputs, every fifth is an LLM entry without inputs. Everything an entry
holds is a function of i (`expected_*`), so a test can check every row it finds.
After each `add` commits it prints ``added i`` (in one write, so never torn).
Finishing an entry (delivered or failed) drops its inputs and deletes its side file; a
small MAX_AGE_S also makes every `add` prune the entries that finished before.
"""

from __future__ import annotations

import os
import sys
import traceback
from itertools import count

import numpy as np

from edge_runtime.sdk.journal import Journal, JournalLimits

DEPLOYMENT = "ab" * 32
SERVED_BY = "cluster"
INLINE_BYTES = 16 * 1024
BIG_WIDTH = 32 * 1024  # float64: 256 KiB, past INLINE_BYTES


def limits(max_age_s: float) -> JournalLimits:
    return JournalLimits(max_age_s=max_age_s, max_inline_bytes=INLINE_BYTES)


def kind_of(i: int) -> str:
    return "llm" if i % 5 == 0 else "pipeline"


def expected_request(i: int) -> bytes:
    return f"request {i}".encode() * (1 + i % 7)


def expected_inputs(i: int) -> dict[str, np.ndarray]:
    if kind_of(i) == "llm":
        return {}
    if i % 2 == 0:
        return {"image": np.arange(BIG_WIDTH, dtype=np.float64) + i,
                "mask": np.full((3, 5), i % 2 == 0)}
    return {"x": np.full((2, 3), i, np.int32)}


def expected_result(i: int) -> bytes:
    return f"result {i}".encode()


def expected_result_arrays(i: int) -> dict[str, np.ndarray]:
    return {"y": np.linspace(0.0, 1.0, 5, dtype=np.float32) * i}


def expected_error(i: int) -> str:
    return f"error {i}"


def say(line: str) -> None:
    """One line on stdout in one write(2): a pipe never shows half of it, even when the
    process is killed while saying it."""
    os.write(sys.stdout.fileno(), f"{line}\n".encode())


def main(path: str, prefix: str, max_age_s: float) -> None:
    with Journal(path, limits(max_age_s)) as journal:
        for i in count():
            key = f"{prefix}{i:06d}"
            journal.add(key, DEPLOYMENT, kind_of(i), expected_request(i),
                        expected_inputs(i) or None)
            say(f"added {i}")
            journal.attempt(key)
            if i % 4 == 3:
                journal.failed(key, expected_error(i))
                continue
            journal.answered(key, SERVED_BY, expected_result(i), expected_result_arrays(i))
            if i % 4 != 2:
                journal.delivered(key)


def serve() -> None:
    for line in sys.stdin:
        path, prefix, max_age_s = line.split()
        pid = os.fork()
        if pid == 0:  # the writer: runs until killed
            try:
                main(path, prefix, float(max_age_s))
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(1)
        say(f"pid {pid}")
        _, status = os.waitpid(pid, 0)
        say(f"exited {pid} {os.waitstatus_to_exitcode(status)}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
    else:
        serve()
