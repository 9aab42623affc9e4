"""Every wire record round-trips, and `from_meta` on anything raises only ProtocolError.

Why property-based: a record's `from_meta` is what stands between a hostile peer
and the agent, so it is fed both valid records (they must come back equal, through
real msgpack) and arbitrary msgpack-able junk, including the shapes that broke
earlier releases (an `activation` whose `client` is an integer N became bytes(N)).
"""

from __future__ import annotations

import math
import string
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edge_runtime.protocol as P
from devices.links import LinkProfile
from devices.profile import DeviceProfile
from edge_runtime.protocol import kinds
from transports.errors import ProtocolError
from transports.wire import Frame, decode, encode

names = st.text(string.ascii_letters + string.digits + "._-/:", min_size=1, max_size=40)
texts = st.text(max_size=60)
sessions = st.text("0123456789abcdef-", min_size=8, max_size=64)
leases = st.floats(0.001, 3600)
sha = st.text("0123456789abcdef", min_size=64, max_size=64)
keys = st.text(string.ascii_letters + string.digits, min_size=40, max_size=40)
counts = st.integers(0, 2**40)
seconds = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
plain_maps = st.dictionaries(names, st.one_of(st.none(), st.booleans(), counts, texts,
                                              st.lists(counts, max_size=3)), max_size=4)


def small(strategy: Any) -> Any:
    return st.lists(strategy, max_size=4).map(tuple)


tensor_specs = st.builds(P.TensorSpec, names, st.sampled_from(["float32", "int64"]),
                         small(st.one_of(st.none(), counts, names)))
exit_rules = st.builds(P.ExitRule, names, names, st.sampled_from(["max_prob", "entropy"]),
                       st.floats(-10, 10), small(names))
hops = st.builds(P.Hop, names, names, st.one_of(st.none(), keys), names)
timings = st.builds(P.StageTiming, st.integers(0, 255), names, seconds, seconds, seconds,
                    st.booleans(), seconds)


@st.composite
def stage_specs(draw: Any) -> P.StageSpec:
    n_stages = draw(st.integers(1, 256))
    return P.StageSpec(
        draw(names), draw(st.integers(0, n_stages - 1)), n_stages, draw(sha),
        draw(st.sampled_from([".onnx", ".tflite"])), draw(small(names)), draw(small(names)),
        draw(small(names)), draw(st.one_of(st.none(), exit_rules)),
        draw(st.one_of(st.none(), hops)), draw(st.one_of(st.none(), counts)),
        draw(small(tensor_specs)), draw(small(keys)))


@st.composite
def shard_specs(draw: Any) -> P.ShardSpec:
    members = draw(st.lists(names, min_size=1, max_size=4))
    return P.ShardSpec(
        draw(texts), draw(names), '{"plan": 1}', draw(st.integers(0, len(members) - 1)),
        tuple(members), tuple(draw(st.one_of(st.none(), keys)) for _ in members),
        draw(st.integers(1, 4096)), draw(st.one_of(st.none(), counts)), draw(counts),
        draw(names), draw(st.floats(0.1, 100)), draw(small(st.tuples(names, counts))),
        draw(st.one_of(st.none(), st.integers(1, 64))), draw(st.sampled_from([None, "q4"])))


@st.composite
def put_chunks(draw: Any) -> P.PutChunk:
    total = draw(counts)
    return P.PutChunk(draw(sha), ".onnx", draw(st.integers(0, total)), total)


PROFILE = DeviceProfile("pi", "aarch64", "Linux", 4, 1500.0, 10.0, 20.0, 4 << 30, 2 << 30,
                        4.0, 0.1, ("onnxruntime",))
gone = st.builds(P.Gone, names, texts)
trace_spans = st.builds(P.TraceSpan, st.integers(1, 2**40), counts, st.sampled_from(P.LANES),
                        names, seconds, seconds, st.just("") | names,
                        st.none() | seconds, counts)

def small_n(strategy: Any, n: int) -> Any:
    return st.lists(strategy, min_size=n, max_size=n).map(tuple)


@st.composite
def llm_stage_specs(draw: Any) -> P.LlmStageSpec:
    n = draw(st.integers(1, 8))
    k = draw(st.integers(0, n - 1))
    next_hops = () if k == n - 1 else draw(st.lists(hops, min_size=1, max_size=3).map(tuple))
    return P.LlmStageSpec(draw(shard_specs()), k, n, next_hops, draw(st.floats(0, 10)),
                          draw(st.one_of(st.none(), st.floats(2, 1e12))))


STRATEGIES: dict[type[P.Record], Any] = {
    P.TensorSpec: tensor_specs, P.ExitRule: exit_rules, P.Hop: hops, P.StageTiming: timings,
    P.StageSpec: stage_specs(), P.ShardSpec: shard_specs(),
    P.Peer: st.builds(P.Peer, names, st.one_of(st.none(), keys)), P.Gone: gone,
    P.ErrorInfo: st.builds(P.ErrorInfo, names, texts, st.one_of(st.none(), plain_maps)),
    P.Hello: st.builds(P.Hello, sessions, leases),
    P.HelloReply: st.builds(
        P.HelloReply, names, names, st.integers(0, 9), counts.map(lambda n: n % 2**32),
        st.just(PROFILE), st.one_of(st.none(), names), st.booleans(),
        st.one_of(st.none(), plain_maps), names, st.one_of(st.none(), st.integers(1, 64)),
        st.one_of(st.none(), counts), small(st.sampled_from([".onnx", ".tflite"])), names,
        st.one_of(st.none(), keys), leases),
    P.Ping: st.just(P.Ping()), P.Pong: st.just(P.Pong()), P.Profile: st.just(P.Profile()),
    P.ProfileReply: st.just(P.ProfileReply(PROFILE)),
    P.Join: st.builds(P.Join, sessions, small(st.builds(P.Peer, names, keys)), leases),
    P.JoinReply: st.builds(P.JoinReply, st.integers(0, 256)),
    P.ProbeLink: st.builds(P.ProbeLink, names, st.one_of(st.none(), keys), names),
    P.ProbeLinkReply: st.builds(lambda r, b: P.ProbeLinkReply(LinkProfile("a", "b", r, b)),
                                seconds, st.floats(1, 1e10)),
    P.ShardRef: st.builds(P.ShardRef, sha, st.just(".onnx")),
    P.HasShards: st.builds(P.HasShards, small(st.builds(P.ShardRef, sha, st.just(".onnx")))),
    P.HasShardsReply: st.builds(P.HasShardsReply, small(sha)),
    P.PutChunk: put_chunks(), P.PutChunkReply: st.builds(P.PutChunkReply, st.booleans()),
    P.Deploy: st.one_of(
        st.builds(P.Deploy, names, st.just(kinds.ONNX_STAGE), stage_specs(), sessions, leases),
        st.builds(P.Deploy, names, st.just(kinds.LLM_SHARD), shard_specs(), sessions, leases)),
    P.DeployReply: st.builds(P.DeployReply, counts, counts, st.one_of(st.none(), counts),
                             small(names), plain_maps),
    P.Unload: st.builds(P.Unload, names), P.UnloadReply: st.builds(P.UnloadReply, names),
    P.Status: st.just(P.Status()),
    P.StatusReply: st.builds(P.StatusReply, names, names, st.booleans(),
                             st.one_of(st.none(), names), seconds,
                             st.one_of(st.none(), counts), counts, counts, counts,
                             st.dictionaries(names, plain_maps, max_size=3)),
    P.Shutdown: st.just(P.Shutdown()), P.ShutdownReply: st.builds(P.ShutdownReply, st.booleans()),
    P.Renew: st.builds(P.Renew, sessions, small(names), leases),
    P.RenewReply: st.builds(P.RenewReply, small(gone)),
    P.Run: st.builds(P.Run, names, seconds, counts),  # with a trace id (0: not traced)
    P.Activation: st.builds(P.Activation, names, st.binary(max_size=255), st.integers(0, 255),
                            small(timings), seconds),
    P.RunResult: st.builds(P.RunResult, names, st.one_of(st.none(), names),
                           st.integers(0, 255), small(timings), seconds),
    P.SetExit: st.builds(P.SetExit, names, st.one_of(st.none(), exit_rules)),
    P.SetExitReply: st.builds(P.SetExitReply, names, st.one_of(st.none(), exit_rules)),
    P.LlmReady: st.builds(P.LlmReady, names),
    P.LlmReadyReply: st.builds(P.LlmReadyReply, names, names, plain_maps),
    P.LlmConnect: st.builds(P.LlmConnect, names, small(names)),
    P.LlmConnectReply: st.builds(P.LlmConnectReply, names, st.integers(0, 256)),
    P.LlmStep: st.integers(1, 4).flatmap(lambda n: st.builds(
        P.LlmStep, names, st.permutations(range(256)).map(lambda p: tuple(p[:n])),
        st.tuples(*[st.integers(0, 1 << 24)] * n), st.tuples(*[st.integers(1, 1 << 24)] * n),
        st.booleans())),
    P.LlmStepReply: st.builds(P.LlmStepReply, names, seconds, seconds),
    P.LlmHidden: st.integers(1, 4).flatmap(lambda n: st.builds(
        P.LlmHidden, names, st.binary(min_size=1, max_size=40), st.integers(0, 255),
        st.lists(st.integers(0, 255), min_size=n, max_size=n, unique=True).map(tuple),
        small_n(st.integers(0, 2**20), n), small_n(st.integers(1, 2**20), n),
        st.booleans(), seconds, seconds)),
    P.LlmStageSpec: llm_stage_specs(),
    P.StepSampling: st.builds(P.StepSampling, st.floats(0, 10), st.integers(0, 100),
                              st.floats(0.01, 1), st.binary(max_size=64)),
    P.LlmPut: st.builds(P.LlmPut, names, names, counts, sha),
    P.LlmCancel: st.builds(P.LlmCancel, names, st.integers(0, 2**62)),
    P.LlmPutReply: st.builds(P.LlmPutReply, names, st.booleans()),
    P.TraceSpan: trace_spans,
    P.TraceGet: st.builds(P.TraceGet, small(st.integers(1, 2**40))),
    P.TraceReply: st.builds(P.TraceReply, names, seconds, small(trace_spans), counts),
}
RECORDS = sorted(STRATEGIES, key=lambda cls: cls.__name__)


def _all_records() -> set[type[P.Record]]:
    return {obj for name in P.__all__ if isinstance(obj := getattr(P, name), type)
            and issubclass(obj, P.Record) and obj is not P.Record}


def test_every_record_has_a_strategy() -> None:
    assert _all_records() == set(STRATEGIES)


def test_every_request_kind_decodes_to_its_record() -> None:
    assert {cls.KIND for cls in _all_records() if cls.KIND} == {*P.MESSAGES, kinds.REPLY}


@pytest.mark.parametrize("record_type", RECORDS, ids=lambda cls: cls.__name__)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_records_round_trip_through_msgpack(record_type: type[P.Record], data: Any) -> None:
    record = data.draw(STRATEGIES[record_type])
    wire = msgpack.unpackb(msgpack.packb(record.to_meta(), use_bin_type=True), raw=False)
    assert record_type.from_meta(wire) == record


@pytest.mark.parametrize("record_type", sorted(P.MESSAGES.values(), key=lambda c: c.KIND),
                         ids=lambda cls: cls.KIND)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_messages_survive_a_real_frame(record_type: type[P.Record], data: Any) -> None:
    record = data.draw(STRATEGIES[record_type])
    frame = decode(encode(record.frame(5, "agent", {"x": np.zeros(2, np.float32)})))
    assert P.decode_message(frame) == record


junk = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64 - 1),
              st.integers(-(10**40), 10**40), st.floats(), st.just(math.nan),
              st.just(math.inf), st.text(max_size=20), st.binary(max_size=20),
              sessions, sha),
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.text(max_size=12), inner, max_size=5)),
    max_leaves=30)


def _near_valid(record_type: type[P.Record]) -> Any:
    """A valid record's meta with one field replaced by junk, or one key added/removed."""
    @st.composite
    def mutate(draw: Any) -> Any:
        meta = draw(STRATEGIES[record_type]).to_meta()
        if meta and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(meta)))
            if draw(st.booleans()):
                meta[key] = draw(junk)
            else:
                del meta[key]
        else:
            meta[draw(st.text(max_size=8))] = draw(junk)
        return meta
    return mutate()


@pytest.mark.parametrize("record_type", RECORDS, ids=lambda cls: cls.__name__)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_from_meta_on_junk_raises_only_protocol_error(record_type: type[P.Record],
                                                      data: Any) -> None:
    meta = data.draw(st.one_of(junk, st.dictionaries(st.text(max_size=12), junk, max_size=6),
                               _near_valid(record_type)))
    try:
        record = record_type.from_meta(meta)
    except ProtocolError:
        return
    assert isinstance(record, record_type)
    assert record_type.from_meta(record.to_meta()) == record


def test_an_integer_client_is_refused_not_turned_into_bytes() -> None:
    """Regression: a 72-byte activation whose `client` is an integer N became bytes(N)."""
    meta = {"deployment_id": "d.1", "client": 200_000_000, "stage": 1, "timings": [],
            "sent_at": 0.0}
    parts = encode(Frame(kind=kinds.ACTIVATION, request_id=1, meta=meta))
    assert sum(len(bytes(p)) for p in parts) < 100
    with pytest.raises(ProtocolError, match=r"activation\.client must be bytes, got int"):
        P.decode_message(decode(parts))


@pytest.mark.parametrize(("record_type", "meta", "field"), [
    (P.Hello, {"session": "short", "lease_s": 1.0}, "hello.session"),
    (P.Hello, {"session": "abcdef012", "lease_s": 0.0}, "hello.lease_s"),
    (P.Hello, {"session": "ABCDEF012", "lease_s": 1.0}, "hello.session"),
    (P.Hello, {"session": "abcdef012", "lease_s": math.nan}, "hello.lease_s"),
    (P.Activation, {"deployment_id": "d", "client": b"x" * 256, "stage": 0, "timings": [],
                    "sent_at": 0.0}, "activation.client"),
    (P.LlmStep, {"deployment_id": "d", "starts": [2**64]}, r"llm_step.starts\[0\]"),
    (P.LlmStep, {"deployment_id": "d", "slots": [0, 1], "starts": [0, 0], "lengths": [1]},
     "llm_step"),
    (P.LlmStep, {"deployment_id": "d", "slots": [3, 3], "starts": [0, 0],
                 "lengths": [1, 1]}, "llm_step.slots"),
    (P.LlmStep, {"deployment_id": "d", "decode_tokens": 5}, "llm_step.decode_tokens"),
    (P.LlmCancel, {"deployment_id": "d", "request_id": -1}, "llm_cancel.request_id"),
    (P.Renew, {"session": "abcdef012", "deployment_ids": ["d"] * 5000, "lease_s": 1.0},
     "renew.deployment_ids"),
    (P.Renew, {"session": "abcdef012", "deployment_ids": [], "lease_s": -1.0}, "renew.lease_s"),
    (P.Unload, {"deployment_id": "d", "extra": 1}, "unload has unknown field"),
    (P.Deploy, {"deployment_id": "d", "type": "onnx-stage", "session": "abcdef012",
                "spec": {"deployment_id": "d"}, "lease_s": 1.0}, "deploy.spec.stage is missing"),
    (P.Deploy, {"deployment_id": "d", "type": "rootkit", "session": "abcdef012",
                "spec": {}, "lease_s": 1.0}, "deploy.type"),
])
def test_errors_name_the_field(record_type: type[P.Record], meta: dict[str, Any],
                               field: str) -> None:
    with pytest.raises(ProtocolError, match=field.replace(".", r"\.")):
        record_type.from_meta(meta)


def test_unknown_kinds_and_stray_replies_are_protocol_errors() -> None:
    for kind in ("launch_missiles", kinds.REPLY):
        with pytest.raises(ProtocolError):
            P.decode_message(Frame(kind=kind))
