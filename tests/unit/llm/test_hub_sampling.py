"""Sampling on the hub draws exactly the token sampling the full row draws.

Logits split by vocabulary rows over three "members" as an LLM group splits them; each
member's candidates (`local_candidates`) are merged on the "hub" (`HubSampler`) and
sampled there with a generator restored from the state the coordinator would send.
The token and the generator's state afterwards must equal the engine's own `sample` on
the whole row with the original generator — for greedy, top-k, top-k + top-p and plain
temperature (which gathers full rows), with ties in the logits."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.agent.llm_sampler import HubSampler
from edge_runtime.errors import GenerationError
from edge_runtime.llm.candidates import candidate_ks, local_candidates, merge_candidates
from edge_runtime.llm.sampling import (
    SamplingParams,
    rng_from_state,
    rng_state,
    sample,
    set_rng_state,
)
from edge_runtime.protocol import LlmStep, LlmStepReply, StepSampling
from transports.errors import ProtocolError

VOCAB = 1000
BOUNDS = (0, 333, 700, VOCAB)  # three members' vocabulary rows, unequal on purpose
SETTINGS = [
    SamplingParams(),  # greedy
    SamplingParams(temperature=0.7, top_k=1),  # greedy too
    SamplingParams(temperature=0.9, top_k=5),
    SamplingParams(temperature=1.3, top_k=40, top_p=0.8),
    SamplingParams(temperature=0.8, top_p=0.9),  # needs full rows
    SamplingParams(temperature=1.0),  # needs full rows
]


def _hub_draw(rows: np.ndarray, params: list[SamplingParams],
              rngs: list[np.random.Generator]) -> tuple[tuple[int, ...], tuple[bytes, ...]]:
    sampling = [StepSampling(p.temperature, p.top_k, p.top_p,
                             b"" if p.greedy else rng_state(r))
                for p, r in zip(params, rngs, strict=True)]
    members = [HubSampler(sampling, VOCAB, lo) for lo in BOUNDS[:-1]]
    parts = [m.payload(rows[:, lo:hi])
             for m, lo, hi in zip(members, BOUNDS[:-1], BOUNDS[1:], strict=True)]
    hub = members[0]
    return hub.draw(hub.rows(parts))


@pytest.mark.parametrize("ties", [False, True])
def test_hub_tokens_and_generator_states_equal_full_row_sampling(ties: bool) -> None:
    data = np.random.default_rng(11)
    for trial in range(40):
        logits = data.normal(0, 3, size=(len(SETTINGS), VOCAB)).astype(np.float32)
        if ties:  # few distinct values: many equal logits inside and across members
            logits = np.round(logits).astype(np.float32)
        mine = [np.random.default_rng(1000 + trial) for _ in SETTINGS]
        want = [sample(row, p, r) for row, p, r in zip(logits, SETTINGS, mine, strict=True)]
        theirs = [np.random.default_rng(1000 + trial) for _ in SETTINGS]
        tokens, states = _hub_draw(logits, SETTINGS, theirs)
        assert list(tokens) == want
        for p, state, rng in zip(SETTINGS, states, mine, strict=True):
            if p.greedy:
                assert state == b""
            else:
                assert state == rng_state(rng)  # the same one draw was made


def test_greedy_and_top_k_send_candidates_not_rows() -> None:
    assert candidate_ks(SETTINGS[:4], VOCAB) == [1, 1, 5, 40]
    assert candidate_ks(SETTINGS, VOCAB) is None  # a temperature-only row: full rows
    assert candidate_ks([SamplingParams(1.0, top_k=VOCAB)], VOCAB) is None
    row = np.arange(10, dtype=np.float32)[None, :]
    packed = local_candidates(row, 500, [1])
    assert packed.dtype == np.int32
    assert packed[0] == 1 and packed[1:2].view(np.float32)[0] == 9 and packed[2] == 509
    merged = merge_candidates([packed], 1, VOCAB)
    assert merged[0, 509] == 9 and np.isneginf(np.delete(merged[0], 509)).all()


def test_malformed_candidates_are_refused() -> None:
    with pytest.raises(GenerationError, match="outside"):
        merge_candidates([np.array([1, 3, VOCAB], np.int32)], 1, VOCAB)
    with pytest.raises(GenerationError, match="count"):
        merge_candidates([np.array([5, 1], np.int32)], 1, VOCAB)
    with pytest.raises(GenerationError, match="more than"):
        merge_candidates([np.array([0, 0], np.int32)], 1, VOCAB)
    with pytest.raises(GenerationError, match="int32"):
        merge_candidates([np.zeros(3, np.float32)], 1, VOCAB)


def test_generator_state_round_trips_exactly() -> None:
    rng = np.random.default_rng(7)
    rng.random()
    rng.integers(0, 10, dtype=np.uint32)  # leaves a buffered uint32 in the state
    copy = rng_from_state(rng_state(rng))
    assert copy.random() == rng.random()
    assert copy.integers(0, 1 << 30, dtype=np.uint32) == rng.integers(0, 1 << 30,
                                                                       dtype=np.uint32)
    other = np.random.default_rng(8)
    set_rng_state(other, rng_state(rng))
    assert other.random() == rng.random()
    with pytest.raises(GenerationError, match="37 bytes"):
        rng_from_state(b"short")
    sampler = HubSampler([StepSampling(1.0, 5, 1.0, b"")], VOCAB, 0)
    with pytest.raises(GenerationError):  # a sampled row without a generator state
        sampler.draw(np.zeros((1, VOCAB), np.float32))


def test_step_and_reply_records_carry_sampling() -> None:
    step = LlmStep("d", (0, 1), (3, 4), (1, 1), True, 0,
                   (StepSampling(), StepSampling(0.8, 5, 0.9, b"x" * 37)))
    assert LlmStep.from_meta(step.to_meta()) == step
    assert LlmStep.from_meta(LlmStep("d").to_meta()).sampling == ()  # logits, as before
    with pytest.raises(ProtocolError, match="sampling"):
        LlmStep.from_meta(LlmStep("d", last_only=False, sampling=(StepSampling(),)).to_meta())
    with pytest.raises(ProtocolError, match="sampling"):
        LlmStep.from_meta(LlmStep("d", sampling=(StepSampling(), StepSampling())).to_meta())
    with pytest.raises(ProtocolError, match="top_p"):
        LlmStep.from_meta({**step.to_meta(), "sampling": [{"top_p": 0.0}, {}]})
    reply = LlmStepReply("d", 0.1, 0.2, (5, 9), (b"", b"y" * 37))
    assert LlmStepReply.from_meta(reply.to_meta()) == reply
    with pytest.raises(ProtocolError, match="rngs"):
        LlmStepReply.from_meta({**reply.to_meta(), "rngs": [b""]})
