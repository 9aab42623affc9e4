"""A second coordinator in its own process, for lease tests: deploys, then obeys stdin.

    python -m support.coordinator_child ADDRESS MODEL   (insecure; EDGE_RUNTIME_LEASE_S sets
                                                         its lease)

Prints ``deployed <id>`` once the model is loaded, then for each line on stdin:
``run`` runs the model once and prints ``ok`` or ``error <ErrorType>``; ``stream``
prints ``streaming`` and then streams requests (`run_many`) until it is killed;
``quit`` exits.
A test SIGKILLs or SIGSTOPs it in between, as a crash or a closed laptop lid would.
"""

from __future__ import annotations

import sys

import numpy as np

import edge_runtime as er


def main(address: str, model_path: str) -> None:
    with er.connect([address], insecure=True) as cluster:
        model = cluster.deploy(model_path, strategy="single")
        print("deployed", model.id, flush=True)
        width = 4096 if "big" in model_path else 32
        feeds = {"x": np.ones((1, width), np.float32)}
        for line in sys.stdin:
            command = line.strip()
            if command == "quit":
                break
            if command == "stream":
                print("streaming", flush=True)
                while True:
                    for _ in model.run_many(feeds for _ in range(100)):
                        pass
            if command == "run":
                try:
                    model.run(feeds, timeout_s=10.0)
                    print("ok", flush=True)
                except er.errors.EdgeRuntimeError as error:
                    print("error", type(error).__name__, str(error)[:300], flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
