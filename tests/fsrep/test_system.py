"""fsrep run the Linux way: mount(8) and /etc/fstab through the
``mount.fuse.fsrep`` helper, plain umount, the systemd notify protocol
(driven with a socket the test owns), the units ``install-system``
writes, JSON logs and their reopening on SIGHUP."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsrep._control import ControlError
from fsrep._system import HELPER, UNITS, mount_arguments
from tests.conftest import DEADLINE, FSREP, Cluster, wait_for

SBIN_HELPER = Path("/sbin") / HELPER


def test_mount_options_become_fsrep_mount_arguments() -> None:
    argv = mount_arguments("/srv/data", "/mnt/data", "rw,secondary=backup:7700,key_file=/etc/k,_netdev,nofail,"
                           "x-systemd.automount,group=vms/a,group=vms/b,writeback_cache,policy=semi-sync")
    assert argv == ["/srv/data", "/mnt/data", "--secondary", "backup:7700", "--key-file", "/etc/k",
                    "--group", "vms/a", "--group", "vms/b", "--writeback-cache", "--policy", "semi-sync"]


@pytest.mark.parametrize(("options", "says"), [
    ("secondary=a:1,bogus=2", "unknown mount option 'bogus'"),
    ("secondary", "needs a value"),
    ("writeback_cache=yes", "takes no value"),
    ("ro,secondary=a:1", "read-write"),
])
def test_a_bad_mount_option_is_one_line(options: str, says: str) -> None:
    with pytest.raises(ControlError) as caught:
        mount_arguments("/srv/data", "/mnt/data", options)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_helper_exits_1_on_a_usage_error() -> None:
    done = subprocess.run([sys.executable, "-c", "import sys; from fsrep._system import helper_main; "
                                                 "sys.exit(helper_main(sys.argv[1:]))", "/srv/a", "/mnt/b", "-o",
                           "bogus=1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "unknown mount option 'bogus'" in done.stderr


@pytest.fixture
def helper_installed() -> Iterator[None]:
    """The helper where mount(8) looks for it, as ``install-system`` puts it;
    removed again if the test put it there."""
    ours = Path(sys.executable).parent / HELPER
    assert os.access(ours, os.X_OK), f"{ours} is not installed (pip install -e .)"
    placed = False
    if not SBIN_HELPER.is_symlink() and not SBIN_HELPER.exists():
        SBIN_HELPER.symlink_to(ours)
        placed = True
    try:
        yield
    finally:
        if placed:
            SBIN_HELPER.unlink()


def _daemon_gone(cluster: Cluster, pid: int) -> None:
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or
             Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", "the daemon to exit")


@pytest.mark.fuse
@pytest.mark.usefixtures("helper_installed")
@pytest.mark.parametrize("how", ["mount -t", "fstab"])
def test_mount_and_plain_umount(cluster: Cluster, tmp_path: Path, how: str) -> None:
    options = f"secondary={cluster.secondary.address},key_file={cluster.key},policy=sync"
    if how == "fstab":
        fstab = tmp_path / "fstab"
        fstab.write_text(f"# fsrep\n{cluster.primary_store} {cluster.mnt} fuse.fsrep {options},_netdev,nofail 0 0\n")
        command = ["mount", "-T", str(fstab), str(cluster.mnt)]
    else:
        command = ["mount", "-t", "fuse.fsrep", str(cluster.primary_store), str(cluster.mnt), "-o", options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    cluster.mounted = True
    assert "fuse.fsrep" in subprocess.run(["findmnt", "-n", "-o", "FSTYPE", str(cluster.mnt)], capture_output=True,
                                          text=True).stdout
    (cluster.mnt / "f").write_bytes(b"through mount(8)\n" * 1000)
    assert cluster.status()["state"] == "InSync"
    pid = cluster.primary_pid()
    done = subprocess.run(["umount", str(cluster.mnt)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    cluster.mounted = False
    _daemon_gone(cluster, pid)
    log = cluster.primary_log()
    assert "filesystem unmounted; draining" in log
    assert "primary daemon exits" in log
    record = json.loads(next((cluster.primary_store / ".fsrep" / "groups").glob("*.json")).read_text())["payload"]
    assert record["clean_shutdown"] is True
    cluster.assert_replicated()


@pytest.mark.fuse
@pytest.mark.usefixtures("helper_installed")
def test_mount_failure_is_exit_32_with_the_reason(cluster: Cluster) -> None:
    done = subprocess.run(["mount", "-t", "fuse.fsrep", str(cluster.primary_store), str(cluster.mnt), "-o",
                           f"secondary=127.0.0.1:1,key_file={cluster.base / 'no-such-key'}"],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 32
    assert "no-such-key" in done.stderr


class Notifications:
    """A socket standing in for systemd's ``$NOTIFY_SOCKET``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def env(self) -> dict[str, str]:
        return {**os.environ, "NOTIFY_SOCKET": str(self.path)}

    def next(self, timeout: float = DEADLINE) -> dict[str, str]:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        assert ready, "no notification within the deadline"
        lines = self.sock.recv(4096).decode().splitlines()
        return dict(line.split("=", 1) for line in lines if line)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notifications(tmp_path: Path) -> Iterator[Notifications]:
    n = Notifications(tmp_path / "notify")
    try:
        yield n
    finally:
        n.close()


@pytest.mark.fuse
def test_serve_notifies_ready_and_stopping_and_reopens_its_log(cluster: Cluster, notifications: Notifications) -> None:
    store = cluster.base / "another-secondary"
    store.mkdir()
    proc = subprocess.Popen([*FSREP, "serve", str(store), "--listen", "127.0.0.1:0", "--key-file", str(cluster.key),
                             "--log-format", "json"], env=notifications.env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        ready = notifications.next()
        assert ready["READY"] == "1"
        assert ready["MAINPID"] == str(proc.pid)
        assert "serving replicas" in ready["STATUS"]
        log = store / ".fsrep" / "serve.log"
        rotated = log.with_suffix(".log.1")
        log.rename(rotated)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: log.exists() and "log file reopened" in log.read_text(), "a new log after SIGHUP")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert notifications.next()["STOPPING"] == "1"
        assert proc.wait(timeout=DEADLINE) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    lines = [json.loads(line) for line in (rotated.read_text() + log.read_text()).splitlines()]
    assert all({"time", "level", "group", "position", "event", "message"} <= line.keys() for line in lines)
    assert any("serving replicas" in line["message"] for line in lines)
    assert lines[-1]["message"] == "secondary daemon exits"


def _mount_notifying(cluster: Cluster, notifications: Notifications, *extra: str) -> dict[str, str]:
    """``fsrep mount`` as a unit runs it, with *notifications* as systemd's
    socket; its first notification."""
    done = subprocess.run([*FSREP, "mount", str(cluster.primary_store), str(cluster.mnt), "--secondary",
                           cluster.secondary.address, "--key-file", str(cluster.key), *extra],
                          env=notifications.env(), capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    cluster.mounted = True
    return notifications.next()


@pytest.mark.fuse
@pytest.mark.expect_log(r'"level": "WARNING", .*"message": "group \S+: link to \S+ lost at .*closed the connection')
def test_mount_notifies_and_logs_state_changes_as_json(cluster: Cluster, notifications: Notifications) -> None:
    ready = _mount_notifying(cluster, notifications, "--log-format", "json")
    assert ready["READY"] == "1"
    assert ready["MAINPID"] == str(cluster.primary_pid())
    assert "InSync" in ready["STATUS"]
    group = cluster.status()["id"]
    (cluster.mnt / "f").write_bytes(b"x" * 4096)
    cluster.secondary.stop()
    (cluster.mnt / "g").write_bytes(b"y" * 4096)  # kept local: the group leaves InSync
    cluster.wait_state("OutOfSync")
    cluster.secondary.start()
    cluster.wait_state("InSync")
    subprocess.run(["umount", str(cluster.mnt)], check=True, timeout=60)
    cluster.mounted = False
    assert notifications.next()["STOPPING"] == "1"
    _daemon_gone(cluster, int(ready["MAINPID"]))
    lines = [json.loads(line) for line in cluster.primary_log().splitlines()]
    states = [line for line in lines if line["event"] == "state"]
    assert [line["state"] for line in states][-2:] == ["Resyncing", "InSync"]
    assert all(line["group"] == group and line["position"].startswith("seq ") and line["reason"] for line in states)
    assert any(line["state"] == "OutOfSync" and line["previous"] == "InSync" for line in states)
    cluster.assert_replicated()


def test_install_system_writes_the_helper_and_units_that_systemd_accepts(tmp_path: Path) -> None:
    done = subprocess.run([*FSREP, "install-system", "--root", str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    helper = tmp_path / "sbin" / HELPER
    assert helper.is_symlink()
    assert os.access(helper.resolve(), os.X_OK)
    units = tmp_path / "etc" / "systemd" / "system"
    assert sorted(p.name for p in units.iterdir()) == sorted(UNITS)
    fsrep = str(Path(sys.executable).parent / "fsrep")
    for unit in units.iterdir():
        text = unit.read_text()
        assert "Type=notify" in text
        assert f"ExecStart={fsrep} " in text
    if shutil.which("systemd-analyze") is None:
        return
    for name in UNITS:
        instance = units / name.replace("@", "@test")
        instance.write_text((units / name).read_text().replace("%i", "test").replace("EnvironmentFile=",
                                                                                    "EnvironmentFile=-"))
        done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(instance)], capture_output=True,
                              text=True, timeout=60)
        complaints = [line for line in done.stderr.splitlines() if instance.name in line or "ExecStart" in line]
        assert not complaints, done.stderr


@pytest.mark.fuse
def test_sigterm_drains_and_unmounts(cluster: Cluster, notifications: Notifications) -> None:
    """What systemd's stop does to a mount unit's daemon."""
    pid = int(_mount_notifying(cluster, notifications, "--policy", "semi-sync")["MAINPID"])
    with (cluster.mnt / "f").open("wb") as f:  # semi-sync: returns before the secondary has it
        for _ in range(64):
            f.write(os.urandom(64 * 1024))
    os.kill(pid, signal.SIGTERM)
    assert notifications.next()["STOPPING"] == "1"
    _daemon_gone(cluster, pid)
    cluster.mounted = False
    assert not os.path.ismount(cluster.mnt)
    assert "received SIGTERM: unmounting" in cluster.primary_log()
    cluster.assert_replicated()


def test_a_notify_socket_that_is_gone_is_reported_once_and_never_fatal(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    from fsrep import _notify
    monkeypatch.setattr(_notify, "_failed", False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert _notify.notify(READY="1") is False
    assert _notify.notify(STATUS="again") is False
    assert [r.getMessage() for r in caplog.records if "cannot notify systemd" in r.getMessage()] == [
        f"cannot notify systemd at {tmp_path / 'gone'} (No such file or directory); the service manager may not "
        f"see this daemon's state"]
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert _notify.notify(READY="1") is False  # not under systemd: nothing to do
