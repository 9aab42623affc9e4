"""DeviceProfile: exact JSON round trip, validation with typed errors, labels."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices import DeviceProfile, ProfileFormatError
from support.devices_fixtures import make_profile

finite = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)
optional = st.none() | st.floats(min_value=-50, max_value=150, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    gflops=finite,
    int8=finite,
    bandwidth=finite,
    disk=finite,
    battery=optional,
    temperature=optional,
    measured_at=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    name=st.text(min_size=1, max_size=30),
    backends=st.lists(st.text(max_size=20), max_size=4).map(tuple),
    emulated=st.none() | st.sampled_from(["raspberry-pi-4", "phone"]),
)
def test_json_round_trip_is_exact(
    gflops: float,
    int8: float,
    bandwidth: float,
    disk: float,
    battery: float | None,
    temperature: float | None,
    measured_at: float,
    name: str,
    backends: tuple[str, ...],
    emulated: str | None,
) -> None:
    original = make_profile(
        name=name,
        gflops_fp32=gflops,
        gflops_int8=int8,
        mem_bandwidth_gbps=bandwidth,
        disk_read_gbps=disk,
        battery_percent=battery,
        temperature_c=temperature,
        measured_at=measured_at,
        backends=backends,
        emulated_preset=emulated,
    )
    assert DeviceProfile.from_json(original.to_json()) == original
    assert DeviceProfile.from_dict(original.to_dict()) == original
    # the dict form is plain JSON (lists, not tuples) and survives a second trip unchanged
    assert json.loads(original.to_json()) == original.to_dict()


def test_integers_in_float_fields_are_accepted_as_floats() -> None:
    data = make_profile().to_dict()
    data["gflops_fp32"] = 72
    assert DeviceProfile.from_dict(data).gflops_fp32 == 72.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cores": "two"}, "cores"),
        ({"cores": True}, "cores"),
        ({"name": None}, "name"),
        ({"backends": "onnxruntime"}, "backends"),
        ({"gflops_fp32": -1.0}, "gflops_fp32"),
        ({"version": 99}, "version"),
        ({"battery_percent": "full"}, "battery_percent"),
    ],
)
def test_bad_fields_raise_profile_format_error(change: dict[str, object], message: str) -> None:
    data = make_profile().to_dict()
    data.update(change)
    with pytest.raises(ProfileFormatError, match=message):
        DeviceProfile.from_dict(data)


def test_missing_field_and_bad_documents() -> None:
    data = make_profile().to_dict()
    del data["gflops_int8"]
    with pytest.raises(ProfileFormatError, match="gflops_int8"):
        DeviceProfile.from_dict(data)
    with pytest.raises(ProfileFormatError, match="JSON object"):
        DeviceProfile.from_dict([1, 2])
    with pytest.raises(ProfileFormatError, match="not valid JSON"):
        DeviceProfile.from_json("{not json")


def test_non_finite_numbers_are_rejected() -> None:
    with pytest.raises(ProfileFormatError):
        make_profile(gflops_fp32=math.inf)
    with pytest.raises(ProfileFormatError):
        make_profile(mem_bandwidth_gbps=math.nan)


def test_labels_never_hide_emulation() -> None:
    assert make_profile(name="pi-lab-3").label() == "pi-lab-3"
    assert make_profile(name="raspberry-pi-4", source="preset").label() == "raspberry-pi-4 (preset)"
    emulated = make_profile(
        name="raspberry-pi-4", emulated_preset="raspberry-pi-4", source="emulated"
    )
    assert emulated.label() == "raspberry-pi-4 (emulated)"


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    data = make_profile().to_dict()
    data["gpu_tflops"] = 1.0
    assert DeviceProfile.from_dict(data) == make_profile(measured_at=data["measured_at"])
