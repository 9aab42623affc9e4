"""An app that streams keyed requests through a journaled cluster, for crash tests.

    python -m support.journal_app JOURNAL MODEL N DELAY_S ADDRESS [ADDRESS ...]

It connects to the running agents at ADDRESS... (insecure: the test's local agents)
with the request journal at JOURNAL, deploys MODEL (an ONNX file with one input
``x[batch, 32]``), prints ``deployed``, then `run_many`s inputs 0..N-1 with keys
``req-0``..``req-{N-1}`` and prints each delivered key as soon as it has it (flushed),
then works on it for DELAY_S (so a test can SIGKILL it with requests in flight).
It prints ``done`` at the end. Input i is `inputs(i)`, a function of i alone, so the
process that resumes the journal can check every answer.
"""

from __future__ import annotations

import sys
import time

import numpy as np

WIDTH = 32  # the input width of `support.onnx_models.mlp_chain`


def inputs(i: int) -> dict[str, np.ndarray]:
    """Request i's inputs (deterministic in i)."""
    return {"x": np.random.default_rng(i).standard_normal((1, WIDTH)).astype(np.float32)}


def key(i: int) -> str:
    return f"req-{i}"


def main(argv: list[str]) -> None:
    if len(argv) < 5:
        sys.exit("usage: journal_app.py JOURNAL MODEL N DELAY_S ADDRESS [ADDRESS ...]")
    journal, model_path, n, delay_s, addresses = (argv[0], argv[1], int(argv[2]),
                                                  float(argv[3]), argv[4:])
    import edge_runtime as er

    with er.connect(addresses, insecure=True, journal=journal) as cluster:
        model = cluster.deploy(model_path, strategy="pipeline")
        print("deployed", flush=True)
        stream = model.run_many((inputs(i) for i in range(n)),
                                keys=(key(i) for i in range(n)))
        for result in stream:
            print(result.key, flush=True)
            time.sleep(delay_s)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
