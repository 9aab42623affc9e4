"""The pipeline's wire records: `llm_hidden` and the "llm-stage" deploy spec.

They round-trip through real msgpack and frames, and a spec that contradicts itself
(a stage outside the pipeline, a last stage with a next hop) is refused on receipt.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edge_runtime.protocol as P
from edge_runtime.protocol import kinds
from transports.errors import ProtocolError
from transports.wire import decode, encode

names = st.text("abcdefgh0123456789-_", min_size=1, max_size=20)
keys = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123456789", min_size=40, max_size=40)
seconds = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)


@st.composite
def hiddens(draw: Any) -> P.LlmHidden:
    n = draw(st.integers(1, 4))
    return P.LlmHidden(
        draw(names), draw(st.binary(min_size=1, max_size=40)), draw(st.integers(0, 255)),
        tuple(draw(st.lists(st.integers(0, 255), min_size=n, max_size=n, unique=True))),
        tuple(draw(st.lists(st.integers(0, 1 << 20), min_size=n, max_size=n))),
        tuple(draw(st.lists(st.integers(1, 1 << 20), min_size=n, max_size=n))),
        draw(st.booleans()), draw(seconds), draw(seconds))


def shard(rank: int = 0, members: tuple[str, ...] = ("a0",)) -> P.ShardSpec:
    return P.ShardSpec("/ckpt", "digest", '{"plan": 1}', rank, members,
                       (None,) * len(members), 64, None, 1 << 20, "127.0.0.1")


@st.composite
def stage_specs(draw: Any) -> P.LlmStageSpec:
    n = draw(st.integers(1, 8))
    stage = draw(st.integers(0, n - 1))
    hops = () if stage == n - 1 else tuple(draw(st.lists(
        st.builds(P.Hop, names, names, st.one_of(st.none(), keys), names),
        min_size=1, max_size=3)))
    return P.LlmStageSpec(shard(), stage, n, hops, draw(st.floats(0, 1)),
                          draw(st.one_of(st.none(), st.floats(1e3, 1e9))))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=st.one_of(hiddens(), stage_specs()))
def test_records_round_trip(record: P.LlmHidden | P.LlmStageSpec) -> None:
    wire = msgpack.unpackb(msgpack.packb(record.to_meta(), use_bin_type=True), raw=False)
    assert type(record).from_meta(wire) == record


@settings(max_examples=20, deadline=None)
@given(record=hiddens())
def test_llm_hidden_survives_a_real_frame(record: P.LlmHidden) -> None:
    frame = decode(encode(record.frame(7, "agent1", {"hidden": np.zeros((2, 4), np.float32),
                                                     "ids": np.zeros(2, np.int64)})))
    assert frame.kind == kinds.LLM_HIDDEN
    assert P.decode_message(frame) == record
    assert P.LlmHidden in P.DEPLOYMENT_MESSAGES


def test_a_deploy_of_an_llm_stage_decodes_to_its_spec() -> None:
    spec = P.LlmStageSpec(shard(), 0, 2, (P.Hop("a1", "tcp://h:1", None, "d"),))
    deploy = P.Deploy("d", kinds.LLM_STAGE, spec, "0123456789abcdef", 30.0)
    assert P.decode_message(decode(encode(deploy.frame(1)))) == deploy


@pytest.mark.parametrize("stage, n, hops, why", [
    (2, 2, (), "stage"),
    (1, 2, (P.Hop("a1", "tcp://h:1", None, "d"),), "next_hops"),
    (0, 2, (), "next_hops"),
])
def test_a_contradictory_stage_spec_is_refused(stage: int, n: int, hops: tuple[P.Hop, ...],
                                               why: str) -> None:
    meta = {**P.LlmStageSpec(shard(), 0, 1).to_meta(), "stage": stage, "n_stages": n,
            "next_hops": [h.to_meta() for h in hops]}
    with pytest.raises(ProtocolError, match=why):
        P.LlmStageSpec.from_meta(meta)


def test_an_llm_hidden_needs_one_slot_start_and_length_per_sequence() -> None:
    meta = {**P.LlmHidden("d", b"c", 0, (0, 1), (0, 0), (1, 1), True).to_meta(),
            "lengths": [1]}
    with pytest.raises(ProtocolError, match="slot, start and length"):
        P.LlmHidden.from_meta(meta)
