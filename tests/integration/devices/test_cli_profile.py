"""`edge-runtime profile`: table, JSON, presets, emulation and bad input, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devices import DeviceProfile, cgroup, presets, system
from devices.cache import cache_path, save
from edge_runtime.cli.main import main
from support.devices_fixtures import make_profile

HOST = system.host_name()
CORES = system.usable_cores(cgroup.read_limits())


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[Path, DeviceProfile]:
    """A cache dir holding a fresh profile of this host (so no measurement runs)."""
    found = make_profile(name=HOST, cores=CORES, gflops_fp32=123.4, temperature_c=48.5)
    assert save(cache_path(tmp_path, HOST), found)
    return tmp_path, found


def test_table_of_the_cached_profile(
    seeded: tuple[Path, DeviceProfile], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, _ = seeded
    assert main(["profile", "--cache-dir", str(directory)]) == 0
    out = capsys.readouterr().out
    assert HOST in out and "measured " in out
    assert "123.4 GFLOPS (onnxruntime)" in out
    assert "48.5 °C" in out and "battery" in out and "n/a" in out
    assert "O_DIRECT" in out


def test_json_round_trips(
    seeded: tuple[Path, DeviceProfile], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, found = seeded
    assert main(["profile", "--json", "--cache-dir", str(directory)]) == 0
    assert DeviceProfile.from_json(capsys.readouterr().out) == found


def test_preset_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--preset", "pi4"]) == 0
    out = capsys.readouterr().out
    assert "raspberry-pi-4 (preset)" in out and "not measured here" in out
    assert "source: spec" in out and "source: derived" in out
    assert main(["profile", "--preset", "jetson-orin-nano", "--json"]) == 0
    assert DeviceProfile.from_json(capsys.readouterr().out) == presets.get("jetson-orin-nano")


def test_emulation_is_labelled(
    seeded: tuple[Path, DeviceProfile], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, _ = seeded
    assert main(["profile", "--emulate", "raspberry-pi-4", "--cache-dir", str(directory)]) == 0
    out = capsys.readouterr().out
    assert "raspberry-pi-4 (emulated)" in out and "EMULATED" in out
    assert "x slower" in out


def test_unknown_preset_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--preset", "raspberry-pi-9"]) == 1
    err = capsys.readouterr().err
    assert "error: unknown device preset 'raspberry-pi-9'" in err
    assert "raspberry-pi-4" in err and "Traceback" not in err


def test_corrupt_cache_is_measured_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = cache_path(tmp_path, HOST)
    path.write_text('{"name": "half a profi')
    assert main(["profile", "--json", "--cache-dir", str(tmp_path)]) == 0
    fresh = DeviceProfile.from_json(capsys.readouterr().out)
    assert fresh.source == "measured" and fresh.name == HOST
    assert DeviceProfile.from_json(path.read_text()) == fresh  # the cache file was repaired


@pytest.mark.slow  # a fresh interpreter plus a measurement: 2-5 s on 2 loaded cores
def test_unwritable_cache_dir_via_the_real_command(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    command = [
        sys.executable, "-m", "edge_runtime.cli.main",
        "profile", "--refresh", "--json", "--cache-dir", str(blocker / "profiles"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "cannot write the profile cache" in done.stderr
    found = json.loads(done.stdout)
    assert found["name"] == HOST and found["disk_read_method"] == "unmeasured"
