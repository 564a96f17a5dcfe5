"""Bad input to the command line: one line, a non-zero exit, no traceback."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from fsrep._cli import COMMANDS
from tests.conftest import SESSION_CLOSED, UNCLEAN_SHUTDOWN, Cluster, fsrep_resync, run_fsrep


def _one_line_error(done, code: int = 1) -> str:
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, f"not one line: {lines}"
    return lines[0]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help_with_an_example(command: str) -> None:
    done = run_fsrep(command, "--help")
    assert re.search(r"^examples?( \(.*\))?:$", done.stdout, re.MULTILINE)
    assert f"fsrep {command}" in done.stdout


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    key = tmp_path / "k"
    run_fsrep("keygen", str(key))
    assert key.stat().st_mode & 0o777 == 0o600
    assert len(key.read_text().strip()) == 64
    before = key.read_text()
    line = _one_line_error(run_fsrep("keygen", str(key), check=False))
    assert "exists already" in line
    assert key.read_text() == before


def test_mount_errors_are_one_line(cluster: Cluster, tmp_path: Path) -> None:
    base = ["mount", str(cluster.primary_store), str(cluster.mnt), "--key-file", str(cluster.key)]
    assert "HOST:PORT" in _one_line_error(run_fsrep(*base, "--secondary", "nonsense", check=False))
    missing = ["mount", str(tmp_path / "nope"), str(cluster.mnt), "--secondary", cluster.secondary.address,
               "--key-file", str(cluster.key)]
    assert "does not exist" in _one_line_error(run_fsrep(*missing, check=False))
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not hex")
    line = _one_line_error(run_fsrep("mount", str(cluster.primary_store), str(cluster.mnt), "--secondary",
                                     cluster.secondary.address, "--key-file", str(bad_key), check=False))
    assert "not an fsrep key" in line
    line = _one_line_error(run_fsrep(*base, "--secondary", cluster.secondary.address, "--policy", "maybe",
                                     check=False), code=2)
    assert "invalid choice" in line


def test_corrupt_group_state_refuses_to_mount(cluster: Cluster) -> None:
    cluster.mount()
    cluster.umount()
    state = next((cluster.primary_store / ".fsrep" / "groups").glob("*.json"))
    state.write_text(state.read_text().replace('"last_seq": ', '"last_seq": 1'))
    line = _one_line_error(cluster.mount(check=False))
    assert "checksum mismatch" in line
    assert state.name in line


def test_status_and_umount_of_a_plain_directory(tmp_path: Path) -> None:
    assert "not an fsrep mount" in _one_line_error(run_fsrep("status", str(tmp_path), check=False))
    assert "not an fsrep mount" in _one_line_error(run_fsrep("umount", str(tmp_path), check=False))


def test_serve_with_a_busy_port_or_missing_store(cluster: Cluster, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    line = _one_line_error(run_fsrep("serve", str(other), "--listen", cluster.secondary.address, "--key-file",
                                     str(cluster.key), check=False))
    assert "cannot listen" in line
    line = _one_line_error(run_fsrep("serve", str(tmp_path / "nope"), "--listen", "127.0.0.1:0", "--key-file",
                                     str(cluster.key), check=False))
    assert "does not exist" in line


def test_a_second_daemon_on_the_same_store_is_refused(mounted: Cluster, tmp_path: Path) -> None:
    other_mnt = tmp_path / "mnt2"
    other_mnt.mkdir()
    line = _one_line_error(run_fsrep("mount", str(mounted.primary_store), str(other_mnt), "--secondary",
                                     mounted.secondary.address, "--key-file", str(mounted.key), check=False))
    assert "in use by another fsrep daemon" in line


def test_a_store_and_mount_point_that_are_nested_are_refused(cluster: Cluster) -> None:
    store = cluster.primary_store
    (store / "inner").mkdir()
    base = ["--secondary", cluster.secondary.address, "--key-file", str(cluster.key)]
    for mountpoint in (store, store / "inner"):
        line = _one_line_error(run_fsrep("mount", str(store), str(mountpoint), *base, check=False, timeout=20))
        assert "nested" in line
    cluster.mount()
    try:
        (cluster.mnt / "sub").mkdir()
        other = cluster.base / "other"
        other.mkdir()
        line = _one_line_error(run_fsrep("mount", str(cluster.mnt / "sub"), str(other), *base, check=False,
                                         timeout=20))
        assert "is on the fsrep mount" in line
        assert run_fsrep("status", str(cluster.mnt), timeout=20).returncode == 0  # nothing hangs
    finally:
        cluster.umount()


@pytest.mark.parametrize("option", ["--ack-timeout", "--async-interval", "--resync-stall-timeout"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "1e400", "1e9", "soon"])
def test_a_number_of_seconds_must_be_finite_and_in_range(tmp_path: Path, option: str, value: str) -> None:
    done = run_fsrep("mount", str(tmp_path), str(tmp_path / "mnt"), "--secondary", "h:1", "--key-file",
                     str(tmp_path / "key"), f"{option}={value}", check=False)  # '=': -inf is no option
    line = _one_line_error(done, code=2)
    assert f"argument {option}: {value!r} is not a number of seconds from " in line
    assert "--help" in line


@pytest.mark.parametrize(("option", "value", "allowed"), [
    ("--lag-budget", "2G", "a size from 0 to 1G bytes"),
    ("--lag-budget", "-1", "a size from 0 to 1G bytes"),
    ("--resync-rate-limit", "nan", "a rate from 0 to 1024G bytes/s"),
    ("--resync-rate-limit", "5000G", "a rate from 0 to 1024G bytes/s"),
])
def test_a_size_or_rate_must_be_in_range(tmp_path: Path, option: str, value: str, allowed: str) -> None:
    done = run_fsrep("mount", str(tmp_path), str(tmp_path / "mnt"), "--secondary", "h:1", "--key-file",
                     str(tmp_path / "key"), option, value, check=False)
    assert f"argument {option}: {value!r} is not {allowed}" in _one_line_error(done, code=2)


def test_the_resync_tools_rate_limit_is_read_the_same_way(tmp_path: Path) -> None:
    done = fsrep_resync(str(tmp_path), "--rate-limit", "nan")
    line = _one_line_error(done, code=2)
    assert line.startswith("fsrep-resync: error: argument --rate-limit: 'nan' is not a rate from 0 to 1024G")


def test_a_usage_error_is_one_line(tmp_path: Path) -> None:
    line = _one_line_error(run_fsrep("mount", str(tmp_path), check=False), code=2)
    assert "the following arguments are required" in line
    assert "see 'fsrep mount --help'" in line


def test_a_secondary_without_a_port_names_the_secondary_option(cluster: Cluster) -> None:
    line = _one_line_error(run_fsrep("mount", str(cluster.primary_store), str(cluster.mnt), "--key-file",
                                     str(cluster.key), "--secondary", "127.0.0.1", check=False))
    assert line.startswith("fsrep mount: error: --secondary must be HOST:PORT")
    assert "'127.0.0.1'" in line
    assert "--group" not in line


def test_text_that_is_not_utf8_is_refused_by_name(cluster: Cluster) -> None:
    base = ["mount", str(cluster.primary_store), str(cluster.mnt), "--key-file", str(cluster.key)]
    not_utf8 = os.fsdecode(b"caf\xe9")  # what argv holds for those bytes
    line = _one_line_error(run_fsrep(*base, "--secondary", cluster.secondary.address, "--group", not_utf8,
                                     check=False))
    assert line.startswith("fsrep mount: error: --group: b'caf\\xe9' is not UTF-8 text")
    config = cluster.base / "fsrep.toml"
    config.write_bytes(b'secondary = "caf\xe9:1"\n')
    line = _one_line_error(run_fsrep(*base, "--config", str(config), check=False))
    assert f"config file {config} is not UTF-8 text (byte 0xe9 at offset 16)" in line
    assert not os.path.ismount(cluster.mnt)


def test_a_store_path_fuse_cannot_carry_is_refused(cluster: Cluster) -> None:
    store = cluster.base / "donn\u00e9es"
    store.mkdir()
    line = _one_line_error(run_fsrep("mount", str(store), str(cluster.mnt), "--secondary", cluster.secondary.address,
                                     "--key-file", str(cluster.key), check=False))
    assert "not ASCII, which FUSE mount options cannot carry" in line
    assert not os.path.ismount(cluster.mnt)


def test_a_replica_store_on_an_fsrep_mount_is_refused(mounted: Cluster) -> None:
    (mounted.mnt / "replicas").mkdir()
    line = _one_line_error(run_fsrep("serve", str(mounted.mnt / "replicas"), "--listen", "127.0.0.1:0",
                                     "--key-file", str(mounted.key), check=False, timeout=20))
    assert f"is on the fsrep mount {mounted.mnt}" in line
    assert not (mounted.primary_store / "replicas" / ".fsrep").exists()
    mounted.assert_replicated()


def _mounted_anywhere(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@pytest.mark.expect_log(SESSION_CLOSED)
def test_umount_after_the_daemon_died_unmounts_lazily(mounted: Cluster) -> None:
    (mounted.mnt / "f").write_text("kept")
    mounted.kill_primary()
    line = _one_line_error(run_fsrep("status", str(mounted.mnt), check=False))
    assert f"the daemon of {mounted.mnt} is gone" in line
    assert f"run 'fsrep umount {mounted.mnt}'" in line
    done = run_fsrep("umount", str(mounted.mnt), check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, lines
    assert "daemon of" in lines[0]
    assert "was gone" in lines[0]
    assert "unmounted it lazily" in lines[0]
    assert not os.path.ismount(mounted.mnt)
    assert not _mounted_anywhere(mounted.mnt)
    mounted.mounted = False
    assert (mounted.primary_store / "f").read_text() == "kept"


@pytest.mark.expect_log(UNCLEAN_SHUTDOWN, SESSION_CLOSED)
def test_mounting_over_a_dead_mount(cluster: Cluster) -> None:
    """A dead mount of this very store is cleared, as the operator would;
    a dead mount of another store is left alone, with the command to run."""
    cluster.mount()
    (cluster.mnt / "f").write_text("before the kill")
    cluster.kill_primary()
    other = cluster.base / "other"
    other.mkdir()
    base = ["--secondary", cluster.secondary.address, "--key-file", str(cluster.key)]
    line = _one_line_error(run_fsrep("mount", str(other), str(cluster.mnt), *base, check=False))
    assert f"{cluster.mnt} is a dead fsrep mount of {cluster.primary_store}" in line
    assert f"run 'fsrep umount {cluster.mnt}' first" in line
    line = _one_line_error(run_fsrep("mount", str(cluster.mnt / "sub"), str(other), *base, check=False))
    assert "Transport endpoint is not connected" in line
    assert f"run 'fsrep umount {cluster.mnt}'" in line
    done = cluster.mount()
    assert done.stdout.splitlines()[0] == f"{cluster.mnt} was left mounted by a daemon of this store that is " \
                                          f"gone; unmounted it"
    assert done.stdout.splitlines()[1].startswith("mounted ")
    assert (cluster.mnt / "f").read_text() == "before the kill"
    cluster.wait_state("InSync")
    cluster.assert_replicated()
