"""The agent-side decode loop: an `llm_step` with `decode_tokens` runs many steps.

Why: a token decoded step by step from the coordinator costs, per token, a step frame
to every member through its control loop, a job hand-off, and the hub's answer back —
on loopback about 1–2 ms at 8 agents, on Wi-Fi a round trip of several milliseconds,
against a few milliseconds of compute per agent. The hub already samples each token
where the logits are; here it also tells the members (one small broadcast in the
group, on the sockets the allreduces use) to feed it and go on, so the coordinator
only reads answers: one `LlmStepReply` per token, streamed as each is sampled.

Every member runs the same loop (SPMD, as the collectives require): a member follows
the hub's broadcast (token, go on?), and only the hub decides — after `decode_tokens`
more tokens, at a stop id, at the end of the context, or at the next token after an
`llm_cancel`. The hub broadcasts before it answers, so the members start the next
step while the answer travels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from edge_runtime.protocol import LlmStep, LlmStepReply, StepSampling

Step = Callable[[np.ndarray, int, tuple[StepSampling, ...], int], LlmStepReply | None]
"""The i-th step of the run: (ids to feed, their first position, sampling, i) → the
hub's answer (one token), or None on a member."""
Broadcast = Callable[[np.ndarray | None], np.ndarray]
"""The group's broadcast from the hub: the hub passes its array, members None."""
Answer = Callable[[int, LlmStepReply], None]
"""Send the run's i-th answer to the coordinator (request id = the step's + i)."""


def decode_run(message: LlmStep, ids: np.ndarray, step: Step, broadcast: Broadcast,
               answer: Answer, cancelled: Callable[[], bool], max_context: int) -> None:
    """Run `message` (one sampled sequence, `decode_tokens` > 0) to its end on this
    member; the hub answers each token with `answer`."""
    sampling = message.sampling
    stops = frozenset(message.stop_ids)
    feed, position = ids, message.starts[0]
    for index in range(message.decode_tokens + 1):
        reply = step(feed, position, sampling, index)
        position += len(feed)
        if reply is not None:  # the hub: decide, tell the members, then answer
            token = reply.tokens[0]
            go = (index < message.decode_tokens and token not in stops
                  and position < max_context and not cancelled())
            broadcast(np.array([token, int(go)], dtype=np.int64))
            answer(index, dataclasses.replace(reply, final=not go))
            if sampling[0].rng:  # the next draw goes on from this one's generator state
                sampling = (dataclasses.replace(sampling[0], rng=reply.rngs[0]),)
        else:
            told = broadcast(None)
            token, go = int(told[0]), bool(told[1])
        if not go:
            return
        feed = np.array([token], dtype=np.int64)


__all__ = ["Answer", "Broadcast", "Step", "decode_run"]
