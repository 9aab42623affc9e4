"""The profile cache's decisions: fresh, stale, corrupt, foreign, unwritable."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from devices import cgroup, system
from devices.cache import MAX_AGE_S, cache_path, default_cache_dir, load_cached, save
from support.devices_fixtures import make_profile

CORES = system.usable_cores(cgroup.read_limits())


def test_default_cache_dir_honours_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_RUNTIME_CACHE_DIR", "/somewhere/er")
    assert default_cache_dir() == Path("/somewhere/er/profiles")
    monkeypatch.delenv("EDGE_RUNTIME_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "edge-runtime" / "profiles"


def test_cache_path_is_keyed_by_a_safe_host_name(tmp_path: Path) -> None:
    assert cache_path(tmp_path, "pi-lab.local") == tmp_path / "pi-lab.local.json"
    assert cache_path(tmp_path, "../../etc/x y").parent == tmp_path


def test_fresh_profile_is_reused_exactly(tmp_path: Path) -> None:
    found = make_profile(name="h", cores=CORES)
    path = cache_path(tmp_path, "h")
    assert save(path, found)
    assert load_cached(path, "h") == found


def test_stale_foreign_or_changed_profiles_are_not_reused(tmp_path: Path) -> None:
    path = cache_path(tmp_path, "h")
    save(path, make_profile(name="h", cores=CORES, measured_at=time.time() - MAX_AGE_S - 5))
    assert load_cached(path, "h") is None
    save(path, make_profile(name="h", cores=CORES, measured_at=time.time() + 3600))  # clock skew
    assert load_cached(path, "h") is None
    save(path, make_profile(name="other-host", cores=CORES))
    assert load_cached(path, "h") is None
    save(path, make_profile(name="h", cores=CORES + 7))
    assert load_cached(path, "h") is None
    assert load_cached(tmp_path / "missing.json", "h") is None


@pytest.mark.parametrize("content", [b"{truncated", b"[]", b'{"name": "h"}', b"\xff\xfe\x00"])
def test_corrupt_cache_files_mean_measure_again(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = cache_path(tmp_path, "h")
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="devices.cache"):
        assert load_cached(path, "h") is None
    assert "measuring again" in caplog.text


def test_unwritable_cache_warns_instead_of_failing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # works even as root, unlike chmod
    with caplog.at_level(logging.WARNING, logger="devices.cache"):
        assert not save(blocker / "profiles" / "h.json", make_profile(name="h"))
    assert "EDGE_RUNTIME_CACHE_DIR" in caplog.text


def test_a_process_on_fewer_cpus_gets_its_own_cache_file(tmp_path: Path) -> None:
    all_cpus = os.cpu_count() or 1
    assert cache_path(tmp_path, "h", all_cpus) == tmp_path / "h.json"
    if all_cpus > 1:
        assert cache_path(tmp_path, "h", 1) == tmp_path / "h-1cpu.json"
