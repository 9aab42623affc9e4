"""ResourceCaps: the emulation arithmetic, the env hand-off and dilation."""

from __future__ import annotations

import json
import time

import pytest

from devices import (
    DeviceError,
    ResourceCaps,
    caps_environment,
    caps_for_preset,
    caps_from_environment,
    dilate,
    dilated,
    emulated_profile,
    presets,
)
from support.devices_fixtures import make_profile

HOST = make_profile(cores=2, gflops_fp32=72.0, mem_available_bytes=24_000_000_000)


def test_caps_for_a_slower_preset() -> None:
    pi4 = presets.get("raspberry-pi-4")
    caps = caps_for_preset("pi4", HOST)
    assert caps.preset == "raspberry-pi-4"
    assert caps.threads == 2  # the Pi has 4 cores, this host only 2
    assert caps.memory_budget_bytes == pi4.mem_available_bytes
    assert caps.dilation == pytest.approx(72.0 / pi4.gflops_fp32, rel=1e-3)


def test_dilation_uses_the_share_of_the_host_the_threads_allow() -> None:
    big_host = make_profile(cores=16, gflops_fp32=400.0)
    pi4 = presets.get("raspberry-pi-4")
    caps = caps_for_preset("raspberry-pi-4", big_host)
    assert caps.threads == 4
    assert caps.dilation == pytest.approx(400.0 * 4 / 16 / pi4.gflops_fp32, rel=1e-3)
    pinned = caps_for_preset("raspberry-pi-4", big_host, cpus=(3,))
    assert pinned.threads == 1 and pinned.cpus == (3,)
    assert pinned.dilation == pytest.approx(400.0 / 16 / pi4.gflops_fp32, rel=1e-3)


def test_a_faster_preset_runs_at_host_speed_and_says_so() -> None:
    caps = caps_for_preset("cloud-vm", HOST)
    assert caps.dilation == 1.0
    emulated = emulated_profile("cloud-vm", HOST)
    assert emulated.gflops_fp32 == pytest.approx(72.0, rel=1e-3)
    cloud = presets.get("cloud-vm")
    assert emulated.gflops_int8 == pytest.approx(cloud.gflops_int8 * 72.0 / cloud.gflops_fp32, 1e-3)


def test_memory_budget_never_exceeds_the_host() -> None:
    small_host = make_profile(mem_available_bytes=1_000_000_000)
    assert caps_for_preset("laptop", small_host).memory_budget_bytes == 1_000_000_000


def test_emulated_profile_is_labelled_and_uses_host_backends() -> None:
    host = make_profile(backends=("onnxruntime:CPUExecutionProvider",), measured_at=123.0)
    emulated = emulated_profile("jetson-nano", host)
    assert emulated.label() == "jetson-nano (emulated)"
    assert emulated.emulated_preset == "jetson-nano" and emulated.source == "emulated"
    assert emulated.backends == host.backends
    assert emulated.gflops_fp32 == presets.get("jetson-nano").gflops_fp32
    assert emulated.measured_at == 123.0


def test_environment_round_trip() -> None:
    caps = ResourceCaps("phone", threads=2, memory_budget_bytes=123, dilation=1.5, cpus=(0, 1))
    env = caps_environment(caps)
    assert env["OMP_NUM_THREADS"] == "2" and env["OPENBLAS_NUM_THREADS"] == "2"
    assert caps_from_environment(env) == caps
    assert caps_from_environment({}) is None
    assert ResourceCaps.from_dict(json.loads(json.dumps(caps.to_dict()))) == caps


@pytest.mark.parametrize(
    "env_value",
    [
        "{not json",
        "[1]",
        '{"threads": "2", "memory_budget_bytes": 1}',
        '{"threads": 0, "memory_budget_bytes": 1}',
        '{"threads": 1, "memory_budget_bytes": 1, "cpus": ["a"]}',
    ],
)
def test_bad_caps_environment_is_a_device_error(env_value: str) -> None:
    with pytest.raises(DeviceError):
        caps_from_environment({"EDGE_RUNTIME_CAPS": env_value})


def test_invalid_caps_are_rejected() -> None:
    with pytest.raises(DeviceError, match="dilation"):
        ResourceCaps(None, threads=1, memory_budget_bytes=1, dilation=0.5)
    with pytest.raises(DeviceError, match="thread"):
        ResourceCaps(None, threads=0, memory_budget_bytes=1)
    with pytest.raises(DeviceError, match="busy_seconds"):
        dilate(ResourceCaps(None, 1, 1, 2.0), -1.0)
    assert "(emulated" in ResourceCaps("phone", 1, 10**9, 2.0).label()


def test_dilate_sleeps_the_difference() -> None:
    caps = ResourceCaps("raspberry-pi-4", threads=1, memory_budget_bytes=1, dilation=3.0)
    start = time.perf_counter()
    dilate(caps, 0.05)
    assert time.perf_counter() - start >= 0.1  # (3 - 1) x 0.05
    start = time.perf_counter()
    with dilated(caps):
        time.sleep(0.03)
    assert time.perf_counter() - start >= 0.09
    start = time.perf_counter()
    with dilated(None):
        pass
    assert time.perf_counter() - start < 0.05
