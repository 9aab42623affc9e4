"""cgroup v2 / v1 parsing over fake cgroup trees (real files in tmp_path, not mocks)."""

from __future__ import annotations

from pathlib import Path

from devices.cgroup import CgroupLimits, effective_memory, parse_proc_cgroup, read_limits
from devices.system import usable_cores
from support.devices_fixtures import write_tree

GIB = 1 << 30
V2_SELF = "0::/user.slice/app.scope\n"
V1_SELF = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n"


def test_parse_proc_self_cgroup_v1_and_v2() -> None:
    assert parse_proc_cgroup(V2_SELF) == {"": "/user.slice/app.scope"}
    paths = parse_proc_cgroup(V1_SELF + "0::/\n")
    assert paths["memory"] == "/docker/abc"
    assert paths["cpu"] == "/docker/abc" and paths["cpuacct"] == "/docker/abc"
    assert paths[""] == "/"
    assert parse_proc_cgroup("garbage\n\n") == {}


def test_v2_takes_the_smallest_limit_of_all_ancestors(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "cgroup.controllers": "cpu memory",
            "user.slice/memory.max": str(2 * GIB),  # the parent limits harder than the child
            "user.slice/app.scope/memory.max": str(3 * GIB),
            "user.slice/app.scope/memory.current": str(GIB // 2),
            "user.slice/app.scope/cpu.max": "150000 100000",
            "user.slice/cpu.max": "max 100000",
        },
    )
    limits = read_limits(root, V2_SELF)
    assert limits == CgroupLimits(2 * GIB, GIB // 2, 1.5, 2)


def test_v2_without_limits(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "cgroup.controllers": "cpu memory",
            "user.slice/app.scope/memory.max": "max",
            "user.slice/app.scope/memory.current": "12345",
            "user.slice/app.scope/cpu.max": "max 100000",
        },
    )
    assert read_limits(root, V2_SELF) == CgroupLimits(None, 12345, None, 2)


def test_v2_namespaced_path_falls_back_to_root_files(tmp_path: Path) -> None:
    # In a container with a cgroup namespace, /proc/self/cgroup names a path that does not
    # exist under the mount: the container's own limits are the root's files.
    root = write_tree(
        tmp_path,
        {"cgroup.controllers": "memory", "memory.max": str(GIB), "memory.current": "100"},
    )
    limits = read_limits(root, "0::/some/host/path\n")
    assert limits.memory_limit_bytes == GIB and limits.memory_usage_bytes == 100


def test_v1_memory_and_cfs_quota(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "memory/memory.limit_in_bytes": "9223372036854771712",  # v1's "no limit"
            "memory/docker/abc/memory.limit_in_bytes": str(512 * 1024 * 1024),
            "memory/docker/abc/memory.usage_in_bytes": str(100 * 1024 * 1024),
            "cpu/cpu.cfs_quota_us": "-1",
            "cpu/docker/abc/cpu.cfs_quota_us": "50000",
            "cpu/docker/abc/cpu.cfs_period_us": "100000",
        },
    )
    limits = read_limits(root, V1_SELF)
    assert limits == CgroupLimits(512 * 1024 * 1024, 100 * 1024 * 1024, 0.5, 1)


def test_v1_unlimited_is_no_limit(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "memory/memory.limit_in_bytes": "9223372036854771712",
            "memory/memory.usage_in_bytes": "79097856",
        },
    )
    limits = read_limits(root, "4:memory:/process_api/x\n")
    assert limits == CgroupLimits(None, 79097856, None, 1)


def test_no_cgroup_files(tmp_path: Path) -> None:
    assert read_limits(tmp_path, "") == CgroupLimits(None, None, None, None)


def test_unparsable_files_are_ignored(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"cgroup.controllers": "", "memory.max": "lots"})
    assert read_limits(root, "0::/\n").memory_limit_bytes is None


def test_effective_memory_honours_the_limit_and_its_usage() -> None:
    host_total, host_available = 24 * GIB, 20 * GIB
    assert effective_memory(host_total, host_available, CgroupLimits(None, None, None, None)) == (
        host_total,
        host_available,
    )
    limited = CgroupLimits(2 * GIB, GIB // 2, None, 2)
    assert effective_memory(host_total, host_available, limited) == (2 * GIB, GIB + GIB // 2)
    # a cgroup already over its limit has nothing available, never a negative figure
    assert effective_memory(host_total, host_available, CgroupLimits(GIB, 2 * GIB, None, 2)) == (
        GIB,
        0,
    )
    # the host can be the tighter bound
    assert effective_memory(GIB, GIB // 4, CgroupLimits(4 * GIB, 0, None, 2)) == (GIB, GIB // 4)


def test_cpu_quota_caps_usable_cores() -> None:
    unlimited = usable_cores(CgroupLimits(None, None, None, None))
    assert unlimited >= 1
    assert usable_cores(CgroupLimits(None, None, 0.5, 2)) == 1
    assert usable_cores(CgroupLimits(None, None, 1000.0, 2)) == unlimited


def test_usage_is_the_working_set_without_inactive_page_cache(tmp_path: Path) -> None:
    v2 = write_tree(
        tmp_path / "v2",
        {
            "cgroup.controllers": "memory",
            "memory.max": str(GIB),
            "memory.current": str(GIB // 2),
            "memory.stat": f"anon 1000\nfile 5000\ninactive_file {GIB // 4}\n",
        },
    )
    assert read_limits(v2, "0::/\n").memory_usage_bytes == GIB // 4
    v1 = write_tree(
        tmp_path / "v1",
        {
            "memory/memory.limit_in_bytes": str(GIB),
            "memory/memory.usage_in_bytes": str(GIB // 2),
            "memory/memory.stat": f"inactive_file 7\ntotal_inactive_file {GIB // 2 + 99}\n",
            "cpu,cpuacct/cpu.cfs_quota_us": "200000",
            "cpu,cpuacct/cpu.cfs_period_us": "100000",
        },
    )
    limits = read_limits(v1, "4:memory:/\n3:cpu,cpuacct:/\n")
    assert limits.memory_usage_bytes == 0  # never negative
    assert limits.cpu_quota_cores == 2.0
