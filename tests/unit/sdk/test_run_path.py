"""The per-request shortcuts of the pipeline run path keep their answers: the one-pass
input check, request keys without uuid4, outputs handed back without a copy, and the
wire records' cached field names and paths (issue 12's overhead work)."""

from __future__ import annotations

import os
import re
import time

import numpy as np
import pytest

from edge_runtime.errors import InputError
from edge_runtime.protocol import RunResult, StageTiming, TensorSpec
from edge_runtime.protocol import records as records_module
from edge_runtime.sdk.inputs import check_inputs
from edge_runtime.sdk.run_wire import owned
from edge_runtime.sdk.tickets import Ledger, new_key
from transports.errors import ProtocolError
from transports.wire import Frame, decode, encode

SIGNATURE = (TensorSpec("x", "float32", ("batch", 4)), TensorSpec("n", "int64", (1,)))


def _inputs() -> dict[str, np.ndarray]:
    return {"x": np.zeros((2, 4), np.float32), "n": np.array([3], np.int64)}


def test_matching_inputs_pass_as_the_same_arrays() -> None:
    given = _inputs()
    arrays = check_inputs(SIGNATURE, given)
    assert arrays.keys() == given.keys()
    assert all(arrays[name] is given[name] for name in given)


@pytest.mark.parametrize("change", [
    {"x": np.zeros((2, 4), np.float64)},  # wrong dtype
    {"x": np.zeros((2, 5), np.float32)},  # wrong fixed dim
    {"x": [[0.0] * 4] * 2},  # not an array
    {"y": np.zeros((2, 4), np.float32)},  # an unexpected name (and "x" still there)
])
def test_a_mismatch_still_names_it_and_quotes_the_signature(change: dict[str, object]) -> None:
    inputs: dict[str, object] = {**_inputs(), **change}
    with pytest.raises(InputError, match=r"Expected x: float32\[batch, 4\], n: int64\[1\]"):
        check_inputs(SIGNATURE, inputs)


def test_a_same_sized_dict_with_another_name_is_refused() -> None:
    inputs = {"x": np.zeros((2, 4), np.float32), "m": np.array([3], np.int64)}
    with pytest.raises(InputError, match=r"missing \['n'\]; unexpected \['m'\]"):
        check_inputs(SIGNATURE, inputs)


def test_spec_dtype_names_numpy_does_not_know_accept_nothing() -> None:
    spec = TensorSpec("x", "no-such-dtype", (1,))
    assert not spec.accepts(np.zeros(1, np.float32))
    assert not spec.accepts(np.zeros(1, np.float32))  # the cached answer, too
    assert TensorSpec("x", "float32", (1,)).accepts(np.zeros(1, np.float32))


def test_the_dtype_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records_module, "_DTYPES", {})
    for i in range(records_module.MAX_DTYPE_NAMES + 50):
        assert not TensorSpec("x", f"made-up-{i}", (1,)).accepts(np.zeros(1, np.float32))
    assert len(records_module._DTYPES) == records_module.MAX_DTYPE_NAMES


def test_request_keys_look_like_uuid4_hex_and_never_repeat() -> None:
    keys = [new_key() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", key) for key in keys)
    assert len(set(keys)) == len(keys)
    assert Ledger(None, "m", "pipeline").open({}, None, None).key != keys[-1]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_makes_keys_of_its_own() -> None:
    read, write = os.pipe()
    parent_next = new_key()
    pid = os.fork()
    if pid == 0:  # the child: its next key must not be the parent's next one
        os.write(write, new_key().encode())
        os._exit(0)
    os.close(write)
    child_key = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert re.fullmatch(r"[0-9a-f]{32}", child_key)
    assert child_key[:16] != parent_next[:16]  # another prefix, not the parent's counter
    assert child_key != new_key()


def test_received_outputs_are_handed_back_writable() -> None:
    array = np.arange(8, dtype=np.float32)
    parts = [bytearray(bytes(p)) for p in encode(Frame("result", tensors={"y": array}))]
    received = decode(parts).tensors["y"]  # a writable view on its own buffer
    assert owned(received) is received
    read_only = decode([bytes(p) for p in parts]).tensors["y"]
    assert not read_only.flags.writeable
    copy = owned(read_only)
    assert copy is not read_only and copy.flags.writeable
    np.testing.assert_array_equal(copy, array)


@pytest.mark.parametrize("count,dtype", [(10, np.int64), (100, np.float32), (5000, np.int64)])
def test_outputs_received_over_zeromq_are_aligned_and_writable(count: int, dtype: type) -> None:
    """libzmq puts small messages at any offset of its read buffer: `owned` copies those,
    so every output a caller gets is aligned and writable, and equal to what was sent."""
    import zmq

    context = zmq.Context()
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    try:
        port = a.bind_to_random_port("tcp://127.0.0.1")
        b.connect(f"tcp://127.0.0.1:{port}")
        sent = np.arange(count, dtype=dtype)
        for _ in range(20):  # several messages, so they land at several buffer offsets
            a.send_multipart(encode(Frame("result", tensors={"y": sent})))
        for _ in range(20):
            got = owned(decode(b.recv_multipart(copy=False)).tensors["y"])
            assert got.flags.aligned and got.flags.writeable
            np.testing.assert_array_equal(got, sent)
    finally:
        a.close(0)
        b.close(0)
        context.term()


def _result(timings: tuple[StageTiming, ...]) -> RunResult:
    return RunResult("dep", None, max(0, len(timings) - 1), timings, time.time())


def test_records_round_trip_through_cached_field_names() -> None:
    timings = tuple(StageTiming(i, f"agent{i}", 0.0, 0.001, 0.0, False, 1.0) for i in range(3))
    record = _result(timings)
    meta = record.to_meta()
    assert list(meta) == ["deployment_id", "exit", "stage", "timings", "sent_at", "partial",
                          "elsewhere"]
    assert RunResult.from_meta(meta) == record
    assert RunResult.from_meta(record.to_meta()) == record  # second time: cached


def test_errors_name_the_place_at_every_nesting() -> None:
    timings = [StageTiming(i, f"agent{i}", 0.0, 0.001, 0.0, False, 1.0).to_meta()
               for i in range(3)]
    meta = _result(()).to_meta()
    for bad in (1, 2):  # the same record parsed at two places names each
        broken = [dict(t) for t in timings]
        broken[bad]["compute_s"] = "slow"
        with pytest.raises(ProtocolError, match=rf"result\.timings\[{bad}\]\.compute_s"):
            RunResult.from_meta({**meta, "timings": broken})
    missing = {k: v for k, v in meta.items() if k != "sent_at"}
    with pytest.raises(ProtocolError, match=r"result\.sent_at is missing"):
        RunResult.from_meta(missing)
    with pytest.raises(ProtocolError, match=r"unknown field\(s\) 'extra'"):
        RunResult.from_meta({**meta, "extra": 1})


def test_the_path_cache_stays_bounded() -> None:
    from edge_runtime.protocol.record import MAX_CACHED_PATHS

    meta = StageTiming(0, "a", 0.0, 0.001, 0.0, False, 1.0).to_meta()
    for i in range(MAX_CACHED_PATHS + 20):
        StageTiming.parse(meta, f"place{i}")
    assert len(StageTiming.__dict__["_paths"]) <= MAX_CACHED_PATHS
