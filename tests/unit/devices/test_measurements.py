"""The individual measurements, short budgets: engines, fallbacks, disk methods."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import psutil
import pytest

from devices import compute, disk, system


def test_onnxruntime_matmul_fp32_and_int8() -> None:
    fp32, int8, engine = compute.matmul_gflops(threads=1, n=128, budget_s=0.05)
    assert engine == "onnxruntime" and fp32 > 0 and int8 > 0


def test_numpy_stands_in_when_onnxruntime_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    fp32, int8, engine = compute.matmul_gflops(threads=1, n=128, budget_s=0.05)
    assert engine == "numpy" and fp32 > 0 and int8 > 0
    assert not any(b.startswith("onnxruntime:") for b in system.backends())


def test_memory_bandwidth_is_plausible() -> None:
    assert 0.1 < compute.memory_bandwidth_gbps(nbytes=16 * 1024 * 1024, budget_s=0.05) < 1000


@pytest.mark.parametrize("method", ["fadvise", "auto"])
def test_disk_read_methods(tmp_path: Path, method: str) -> None:
    size = disk.CHUNK_BYTES * 2
    gbps, used = disk.disk_read_gbps(tmp_path, method=method, size=size, budget_s=0.2)
    assert gbps > 0
    assert used in (("fadvise",) if method == "fadvise" else ("O_DIRECT", "fadvise"))
    assert (tmp_path / disk.PROBE_NAME).stat().st_size == size
    before = (tmp_path / disk.PROBE_NAME).stat().st_mtime_ns
    disk.disk_read_gbps(tmp_path, method=method, size=size, budget_s=0.2)
    assert (tmp_path / disk.PROBE_NAME).stat().st_mtime_ns == before  # the probe is reused


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="O_DIRECT is Linux-only")
def test_o_direct_on_a_filesystem_that_supports_it(tmp_path: Path) -> None:
    try:  # the test's own probe: tmpfs (and some overlays) refuse O_DIRECT
        (tmp_path / "x").write_bytes(b"")
        os.close(os.open(tmp_path / "x", os.O_RDONLY | os.O_DIRECT))
    except OSError:
        pytest.skip("this filesystem refuses O_DIRECT")
    _, used = disk.disk_read_gbps(tmp_path, size=disk.CHUNK_BYTES, budget_s=0.1)
    assert used == "O_DIRECT"


def test_unwritable_disk_probe_is_unmeasured(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING, logger="devices.disk"):
        assert disk.disk_read_gbps(blocker / "sub") == (0.0, "unmeasured")
    assert "disk not measured" in caplog.text
    with pytest.raises(ValueError, match="multiple"):
        disk.disk_read_gbps(tmp_path, size=12345)


def test_static_facts() -> None:
    assert system.freq_mhz() >= 0
    assert system.arch() and system.os_name() and system.host_name()
    battery = system.battery_percent()
    assert battery is None or 0 <= battery <= 100
    temperature = system.temperature_c()
    assert temperature is None or temperature > 0


def test_freq_falls_back_to_proc_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor: 0\ncpu MHz\t\t: 1500.000\nprocessor: 1\ncpu MHz : 1800.5\n")
    monkeypatch.setattr(psutil, "cpu_freq", lambda: None)  # a kernel without cpufreq
    assert system.freq_mhz(cpuinfo) == 1800.5
    assert system.freq_mhz(tmp_path / "missing") == 0.0
