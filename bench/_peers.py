"""The peers the benchmark compares fsrep with, and the slow link it runs
fsrep over: GlusterFS (``replica 2``, both bricks here, its FUSE client) and
two network namespaces joined through a delay line.

Both are context managers that stop everything they started — daemons by
their pid files, namespaces, the /etc/hosts alias — also on errors and
interrupts (the cleanup runs inside ``shielded()``).

Caveats (see /work/shared/BENCH-NOTES.md for the GlusterFS traps):

- This kernel has no ``sch_netem``, so ``tc ... netem delay`` cannot add the
  delay. The namespaces are joined by TUN devices and ``_delayline.py``
  instead, which holds each packet for the one-way delay; the round-trip
  time actually seen is measured (TCP connect to a closed port) and
  reported.
- GlusterFS bricks reach glusterd through the brick's host name, and
  glusterd listens only on 127.0.0.1 here, so that name must resolve to
  127.0.0.1 itself (an alias for 127.0.0.2 is refused with "Unable to start
  brick"). The machine's own name is used when it does; otherwise an alias
  for 127.0.0.1 is added to /etc/hosts for the run. ``127.0.0.1`` and
  ``localhost`` themselves are refused by GlusterFS.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from _common import BenchError, alive, cmdline, is_mounted, shielded, stop_pid

HERE = Path(__file__).resolve().parent

# --- commands ---------------------------------------------------------------------


def sh(*argv: str, what: str, timeout: float = 60) -> str:
    """Run *argv*; a failure becomes a BenchError naming *what* was being done."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              start_new_session=True)
    except FileNotFoundError:
        raise BenchError(f"{what}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what}: {' '.join(argv)} did not finish in {timeout:g}s") from None
    if done.returncode != 0:
        why = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise BenchError(f"{what}: {' '.join(argv)}: exit {done.returncode}: {why[-1] if why else ''}")
    return done.stdout


def quiet(*argv: str, timeout: float = 60) -> None:
    """Run a cleanup command; its failure is not an error (the thing may be gone already)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, start_new_session=True)


# --- a link with a round-trip time ------------------------------------------------------

# Named after this process, so that two runs (a full one and the test suite's
# smoke run) never share or remove each other's namespaces and devices.
NS_PREFIX = "fsrep-bench-"
NS_A, NS_B = f"{NS_PREFIX}{os.getpid()}-a", f"{NS_PREFIX}{os.getpid()}-b"
DEV_A, DEV_B = f"fsrb{os.getpid()}a", f"fsrb{os.getpid()}b"  # at most 15 characters
ADDR_A, ADDR_B = "10.231.0.1", "10.231.0.2"  # inside the namespaces only
LINK_MTU = 65000  # few, large packets: the relay is not the bottleneck

_RTT_PROBE = """
import socket, statistics, sys, time
samples = []
for _ in range(int(sys.argv[2])):
    s = socket.socket()
    start = time.perf_counter()
    try:
        s.connect((sys.argv[1], 9))  # nothing listens: one round trip to the RST
    except ConnectionRefusedError:
        samples.append(time.perf_counter() - start)
    finally:
        s.close()
print(statistics.median(samples) * 1000 if samples else -1)
"""


@dataclass
class Link:
    """Two namespaces, A (the primary's) and B (the secondary's), and the
    round-trip time measured between them."""

    addr_a: str
    addr_b: str
    one_way_us: int
    rtt_ms: float = 0.0

    @property
    def enter_a(self) -> tuple[str, ...]:
        """Prefix that runs a command in A's network namespace only (not
        ``ip netns exec``, whose private mount namespace would hide a FUSE
        mount from everyone else)."""
        return ("nsenter", f"--net=/run/netns/{NS_A}")

    @property
    def enter_b(self) -> tuple[str, ...]:
        return ("nsenter", f"--net=/run/netns/{NS_B}")


def _remove_namespaces() -> None:
    for ns in (NS_A, NS_B):
        if Path(f"/run/netns/{ns}").exists():
            quiet("ip", "netns", "del", ns)


def _remove_stale_namespaces() -> None:
    """Namespaces of earlier runs whose process is gone (killed with SIGKILL)."""
    for path in Path("/run/netns").glob(f"{NS_PREFIX}*"):
        pid = path.name.removeprefix(NS_PREFIX).split("-")[0]
        if pid.isdigit() and not alive(int(pid)):
            quiet("ip", "netns", "del", path.name)


def _wait_ready(proc: subprocess.Popen[str], timeout: float) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            if proc.stdout.readline().strip() == "ready":
                return
            break
        if proc.poll() is not None:
            break
    raise BenchError(f"delay line (bench/_delayline.py) did not start: exit {proc.poll()}; "
                     "is /dev/net/tun there (CONFIG_TUN)?")


def _configure(ns: str, dev: str, addr: str) -> None:
    what = f"network namespace {ns}"
    sh("ip", "link", "set", dev, "netns", ns, what=what)
    sh("ip", "-n", ns, "link", "set", "lo", "up", what=what)
    sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev, what=what)
    sh("ip", "-n", ns, "link", "set", dev, "mtu", str(LINK_MTU), "up", what=what)


def measure_rtt(link: Link, probes: int = 30) -> float:
    """Median milliseconds of a TCP connect from A to a closed port of B."""
    out = sh(*link.enter_a, sys.executable, "-c", _RTT_PROBE, link.addr_b, str(probes),
             what="measuring the round-trip time between the namespaces")
    rtt = float(out.strip())
    if rtt < 0:
        raise BenchError(f"no round trip from {NS_A} to {link.addr_b}: the delay line forwards nothing")
    return rtt


@contextlib.contextmanager
def delayed_link(one_way_us: int = 500) -> Iterator[Link]:
    """Namespaces NS_A and NS_B joined by a delay line holding each packet
    *one_way_us* microseconds; removed, with the relay, at the end."""
    _remove_stale_namespaces()
    relay = subprocess.Popen([sys.executable, str(HERE / "_delayline.py"), DEV_A, DEV_B, "--delay-us",
                              str(one_way_us)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        _wait_ready(relay, 10)
        for ns in (NS_A, NS_B):
            sh("ip", "netns", "add", ns, what=f"creating network namespace {ns}")
        _configure(NS_A, DEV_A, ADDR_A)
        _configure(NS_B, DEV_B, ADDR_B)
        link = Link(ADDR_A, ADDR_B, one_way_us)
        link.rtt_ms = measure_rtt(link)
        yield link
    finally:
        with shielded():
            stop_pid(relay.pid, timeout=5)
            relay.wait(timeout=5)
            _remove_namespaces()


# --- GlusterFS ------------------------------------------------------------------------

VOLUME = "fsrepbench"
HOSTS = Path("/etc/hosts")
ALIAS = "fsrep-bench-gluster"
GLUSTER_TIMEOUT = 120.0


def _gluster_host() -> tuple[str, bool]:
    """A brick host name resolving to 127.0.0.1, and whether the alias had
    to be added to /etc/hosts for it."""
    name = socket.gethostname()
    with contextlib.suppress(OSError):
        if name not in ("localhost", "") and socket.gethostbyname(name) == "127.0.0.1":
            return name, False
    with contextlib.suppress(OSError):
        if socket.gethostbyname(ALIAS) == "127.0.0.1":
            return ALIAS, False
    with open(HOSTS, "a", encoding="utf-8") as f:
        f.write(f"127.0.0.1 {ALIAS}  # fsrep bench/run.py, removed at its end\n")
    return ALIAS, True


def _remove_alias() -> None:
    lines = HOSTS.read_text(encoding="utf-8").splitlines(keepends=True)
    HOSTS.write_text("".join(line for line in lines if ALIAS not in line), encoding="utf-8")


def _glusterd_vol(working_dir: Path, target: Path) -> None:
    """A copy of the packaged glusterd.vol with its state in *working_dir*
    (the system's /var/lib/glusterd stays untouched) and listening on
    127.0.0.1 only."""
    text = Path("/etc/glusterfs/glusterd.vol").read_text(encoding="utf-8")
    text = re.sub(r"option working-directory \S+", f"option working-directory {working_dir}", text)
    text = text.replace("end-volume", "    option transport.socket.bind-address 127.0.0.1\nend-volume", 1)
    target.write_text(text, encoding="utf-8")


@dataclass
class Gluster:
    """A started ``replica 2`` volume, mounted with its FUSE client."""

    host: str
    mountpoint: Path
    bricks: list[Path]
    base: Path
    pids: set[int] = field(default_factory=set)  # every daemon seen, stopped at the end

    def cli(self, *args: str, timeout: float = GLUSTER_TIMEOUT) -> str:
        return sh("gluster", "--mode=script", *args, what=f"gluster {' '.join(args[:2])}", timeout=timeout)

    def brick_pids(self) -> list[int | None]:
        """The pid of each brick's process (None while it is offline), from
        ``gluster volume status --xml``."""
        root = ET.fromstring(self.cli("volume", "status", VOLUME, "--xml"))
        pids: dict[str, int | None] = {}
        for node in root.iter("node"):
            path, status, pid = node.findtext("path"), node.findtext("status"), node.findtext("pid")
            pids[path or ""] = int(pid) if status == "1" and pid and pid.isdigit() and int(pid) > 0 else None
        found = [pids.get(str(b)) for b in self.bricks]
        self.pids.update(p for p in found if p)
        return found

    def wait_brick(self, index: int, online: bool, timeout: float = GLUSTER_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while (self.brick_pids()[index] is not None) != online:
            if time.monotonic() > deadline:
                raise BenchError(f"GlusterFS brick {self.bricks[index]} not {'online' if online else 'offline'} "
                                 f"after {timeout:g}s; see /var/log/glusterfs/bricks/")
            time.sleep(0.1)

    def kill_brick(self, index: int) -> None:
        """SIGKILL one brick's process, as a crash of its host, and wait
        until glusterd has noticed (a ``start force`` before that does
        nothing)."""
        pid = self.brick_pids()[index]
        if pid is None:
            raise BenchError(f"GlusterFS brick {self.bricks[index]} is not running")
        os.kill(pid, signal.SIGKILL)
        self.wait_brick(index, online=False)
        _forget_pidfile(pid)


    def heal_entries(self) -> int | None:
        """Entries still to heal over all bricks; None while a brick is not
        connected (its count is '-')."""
        out = self.cli("volume", "heal", VOLUME, "info")
        counts = re.findall(r"Number of entries: (\S+)", out)
        if len(counts) != len(self.bricks) or not all(c.isdigit() for c in counts):
            return None
        return sum(int(c) for c in counts)

    def restart_and_heal(self, index: int, timeout: float = 600) -> float:
        """Bring the killed brick back (``volume start force``) and heal:
        seconds from the brick being online until ``heal info`` lists no
        entries on any brick."""
        deadline = time.monotonic() + timeout
        self.cli("volume", "start", VOLUME, "force")
        self.wait_brick(index, online=True, timeout=min(timeout, GLUSTER_TIMEOUT))
        start = time.perf_counter()
        while True:  # the self-heal daemon may refuse the first request while the brick connects
            try:
                self.cli("volume", "heal", VOLUME)
                break
            except BenchError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        while self.heal_entries() != 0:
            if time.monotonic() > deadline:
                raise BenchError(f"GlusterFS self-heal not done after {timeout:g}s "
                                 "(see /var/log/glusterfs/glustershd.log)")
            time.sleep(0.05)
        return time.perf_counter() - start


def _forget_pidfile(pid: int) -> None:
    """Remove the pid file of a killed brick. Here nothing reaps orphans
    (pid 1 is not an init), so the killed brick stays a zombie, and glusterd,
    seeing its pid in /proc, would take it for "already running" and not
    start it again on ``start force``."""
    for pidfile in Path("/var/run/gluster").glob(f"vols/{VOLUME}/*.pid"):
        with contextlib.suppress(OSError, ValueError):
            if int(pidfile.read_text().strip()) == pid:
                pidfile.unlink()


def _daemon_pids(volume: str) -> set[int]:
    """Pids in the pid files of the volume's bricks and self-heal daemon,
    and of its FUSE client (by command line)."""
    pids = set()
    run = Path("/var/run/gluster")
    for pidfile in [*run.glob(f"vols/{volume}/*.pid"), *run.glob(f"shd/{volume}/*.pid")]:
        with contextlib.suppress(OSError, ValueError):
            pids.add(int(pidfile.read_text().strip()))
    for entry in os.listdir("/proc"):
        if entry.isdigit() and any(arg == f"--volfile-id=/{volume}" for arg in cmdline(int(entry))):
            pids.add(int(entry))
    return {p for p in pids if alive(p)}


def _start_glusterd(base: Path) -> Path:
    vol, pidfile = base / "glusterd.vol", base / "glusterd.pid"
    (base / "state").mkdir(parents=True, exist_ok=True)
    _glusterd_vol(base / "state", vol)
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 24007)) == 0:
            raise BenchError("GlusterFS: something already listens on 127.0.0.1:24007 (another glusterd?); "
                             "stop it first")
    sh("glusterd", "-f", str(vol), "-p", str(pidfile), f"--log-file={base / 'glusterd.log'}",
       what="starting glusterd")
    deadline = time.monotonic() + GLUSTER_TIMEOUT
    while subprocess.run(["gluster", "--mode=script", "volume", "list"], capture_output=True,
                         timeout=30).returncode != 0:
        if time.monotonic() > deadline:
            raise BenchError(f"glusterd did not answer in {GLUSTER_TIMEOUT:g}s; see {base / 'glusterd.log'}")
        time.sleep(0.1)
    return pidfile


def _stop_gluster(g: Gluster, pidfile: Path, alias_added: bool) -> None:
    g.pids |= _daemon_pids(VOLUME)
    if is_mounted(g.mountpoint):
        quiet("umount", str(g.mountpoint))
        if is_mounted(g.mountpoint):
            quiet("umount", "-l", str(g.mountpoint))
    quiet("gluster", "--mode=script", "volume", "stop", VOLUME, "force", timeout=60)
    quiet("gluster", "--mode=script", "volume", "delete", VOLUME, timeout=60)
    with contextlib.suppress(OSError, ValueError):
        g.pids.add(int(pidfile.read_text().strip()))
    for pid in sorted(g.pids):
        stop_pid(pid, timeout=10)
    if alias_added:
        _remove_alias()


@contextlib.contextmanager
def glusterfs(base: Path) -> Iterator[Gluster]:
    """glusterd with its state under *base*, a ``replica 2`` volume of two
    bricks under *base*, mounted at *base*/mnt; all of it stopped and
    deleted at the end."""
    base.mkdir(parents=True, exist_ok=True)
    host, alias_added = _gluster_host()
    g = Gluster(host, base / "mnt", [base / "brick1", base / "brick2"], base)
    pidfile = base / "glusterd.pid"
    try:
        for d in (g.mountpoint, *g.bricks):
            d.mkdir(exist_ok=True)
        pidfile = _start_glusterd(base)
        g.cli("volume", "create", VOLUME, "replica", "2", *(f"{host}:{b}" for b in g.bricks), "force")
        g.cli("volume", "start", VOLUME)
        g.brick_pids()
        sh("mount", "-t", "glusterfs", f"127.0.0.1:/{VOLUME}", str(g.mountpoint),
           what="mounting the GlusterFS volume (see /var/log/glusterfs/)")
        yield g
    finally:
        with shielded():
            _stop_gluster(g, pidfile, alias_added)
