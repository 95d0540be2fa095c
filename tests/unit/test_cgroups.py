"""farm.cgroups reads the limits of this process's cgroup and those above it, however
the hierarchy is mounted: a fake /proc whose mountinfo points at directories of the test's."""

from __future__ import annotations

from pathlib import Path

from farm import cgroups


def fake_proc(tmp_path: Path, cgroup: str, mounts: list[tuple[str, Path, str, str]]) -> Path:
    """/proc/self/cgroup holding ``cgroup``; mountinfo a line per (root, point, fstype,
    super options)."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    lines = [
        f"{30 + n} 1 0:{n} {root} {point} rw,relatime shared:{n} - {fstype} cgroup {options}"
        for n, (root, point, fstype, options) in enumerate(mounts)
    ]
    (proc / "self" / "mountinfo").write_text("\n".join(lines) + "\n")
    return proc


def test_v2_the_smallest_limit_on_the_way_up(tmp_path: Path) -> None:
    """A systemd unit's CPUQuota= on its slice counts; "max" is no limit."""
    top = tmp_path / "cg"
    unit = top / "farm.slice" / "farm.service"
    unit.mkdir(parents=True)
    (top / "farm.slice" / "cpu.max").write_text("150000 100000\n")
    (unit / "cpu.max").write_text("max 100000\n")
    (unit / "memory.max").write_text(f"{1 << 30}\n")
    (top / "farm.slice" / "memory.max").write_text("max\n")
    proc = fake_proc(tmp_path, "0::/farm.slice/farm.service\n", [("/", top, "cgroup2", "rw")])
    assert cgroups.cpu_limit(proc) == 1.5
    assert cgroups.memory_limit(proc) == 1 << 30


def test_v1_a_containers_own_group_mounted_as_the_top(tmp_path: Path) -> None:
    """Docker on cgroup v1 without a cgroup namespace: /proc/self/cgroup names the
    container's group, which the mount shows as its root; v1's "unlimited" is none."""
    cpu, memory = tmp_path / "cpu,cpuacct", tmp_path / "memory"
    cpu.mkdir()
    memory.mkdir()
    (cpu / "cpu.cfs_quota_us").write_text("200000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    (memory / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    proc = fake_proc(
        tmp_path,
        "5:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n",
        [
            ("/docker/abc", cpu, "cgroup", "rw,cpu,cpuacct"),
            ("/docker/abc", memory, "cgroup", "rw,memory"),
        ],
    )
    assert cgroups.cpu_limit(proc) == 2.0
    assert cgroups.memory_limit(proc) is None


def test_no_limit_where_nothing_is_set_or_readable(tmp_path: Path) -> None:
    top = tmp_path / "cg"
    top.mkdir()
    (top / "cpu.cfs_quota_us").write_text("-1\n")
    (top / "cpu.cfs_period_us").write_text("100000\n")
    proc = fake_proc(tmp_path, "2:cpu:/\n", [("/", top, "cgroup", "rw,cpu")])
    assert cgroups.cpu_limit(proc) is None
    assert cgroups.cpu_limit(tmp_path / "no-proc") is None
    assert cgroups.memory_limit(tmp_path / "no-proc") is None
