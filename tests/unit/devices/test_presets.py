"""Presets: the required devices exist, every figure has a source, names resolve."""

from __future__ import annotations

import pytest

from devices import DeviceError, UnknownPresetError, presets

REQUIRED = [
    "raspberry-pi-4",
    "raspberry-pi-5",
    "jetson-nano",
    "jetson-orin-nano",
    "phone",
    "laptop",
    "cloud-vm",
]


def test_required_presets_exist_with_a_source_for_every_figure() -> None:
    assert set(REQUIRED) <= set(presets.names())
    for name in presets.names():
        found = presets.get(name)
        assert found.name == name and found.source == "preset"
        assert found.label() == f"{name} (preset)"
        assert found.emulated_preset is None
        sources = presets.sources(name)
        assert set(sources) >= {
            "gflops_fp32",
            "gflops_int8",
            "mem_bandwidth_gbps",
            "disk_read_gbps",
        }
        for field, source in sources.items():
            assert source.split(":")[0] in {"spec", "derived", "published measurement"}, (
                name,
                field,
            )
        assert presets.notes(name)
        assert found.gflops_fp32 > 0 and found.mem_available_bytes <= found.mem_total_bytes


def test_relative_order_matches_the_hardware() -> None:
    # Sanity of the published figures against each other (not against a constant).
    pi4, pi5 = presets.get("raspberry-pi-4"), presets.get("raspberry-pi-5")
    nano, orin = presets.get("jetson-nano"), presets.get("jetson-orin-nano")
    assert pi5.gflops_fp32 > pi4.gflops_fp32 and orin.gflops_fp32 > nano.gflops_fp32
    assert presets.get("laptop").disk_read_gbps > pi5.disk_read_gbps > pi4.disk_read_gbps


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("pi4", "raspberry-pi-4"),
        ("RPi5", "raspberry-pi-5"),
        ("Raspberry_Pi_4", "raspberry-pi-4"),
        (" orin ", "jetson-orin-nano"),
        ("android", "phone"),
        ("cloud-vm", "cloud-vm"),
    ],
)
def test_aliases_resolve(alias: str, canonical: str) -> None:
    assert presets.resolve(alias) == canonical
    assert presets.get(alias) == presets.get(canonical)


def test_unknown_preset_lists_the_valid_names() -> None:
    with pytest.raises(UnknownPresetError) as caught:
        presets.get("raspberry-pi-9")
    message = str(caught.value)
    assert "raspberry-pi-9" in message
    for name in REQUIRED:
        assert name in message
    assert isinstance(caught.value, DeviceError) and isinstance(caught.value, KeyError)
