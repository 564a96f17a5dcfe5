"""Fixtures that run the real thing: ``fsrep serve`` on 127.0.0.1 and
``fsrep mount`` through the CLI, and a digest of a whole tree to compare the
primary store with the replica. ``proxied`` puts a FaultProxy (tests/proxy.py)
between the two, to cut, stall or slow the link.

Every WARNING, ERROR or traceback a cluster's daemons log fails the test
that made the cluster, at its teardown, unless the test names it with
``@pytest.mark.expect_log(PATTERN, ...)`` (regular expressions searched in
each line): a fault test says which complaints its fault causes, and any
other is news."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fsrep._digest import tree_differences, tree_digest
from tests.proxy import FaultProxy, ProxyError

FSREP = [sys.executable, "-m", "fsrep"]
RESYNC = [sys.executable, "-m", "tools.resync"]
DEADLINE = 30.0
MiB = 1024 * 1024
# A line of a daemon's log worth reading (text or --log-format json).
COMPLAINT = re.compile(r' (?:WARNING|ERROR|CRITICAL) |"level": "(?:WARNING|ERROR|CRITICAL)"|Traceback')
_CLUSTERS: list[Cluster] = []  # every cluster made so far, so each test's are checked at its teardown
_CALL_REPORT = pytest.StashKey[pytest.TestReport]()

# What the daemons log when a test cuts, stalls or kills on purpose, for @pytest.mark.expect_log.
AT = r"(?: at seq \d+ of generation (?:[0-9a-f]+|none))?"  # the position a line may name
_HUNG_UP = (r"(?:\S+ closed the connection|(?:send to|receive from) \S+: \[Errno (?:104\] Connection reset by peer|"
            r"32\] Broken pipe))$")  # how a peer that hung up shows, by when it is noticed
LINK_LOST = r" WARNING \S+: group \S+: link to \S+ lost" + AT + ": "  # then why
LINK_CLOSED = LINK_LOST + _HUNG_UP  # the primary's, the secondary gone
ACKS_STOPPED = LINK_LOST + r"no acknowledgement for \d+s$"
SESSION_CLOSED = r" WARNING \S+: group \S+: session with \S+ ended: " + _HUNG_UP  # the secondary's, the primary gone
REFUSED_PEER = (r" WARNING \S+: refused a peer that did not authenticate: (?:\d+ more in the last \d+s \(the "
                r"latest: )?\S+: ")  # then why: the rest of the line
RESERVE_GIVEN_UP = r" WARNING \S+: the store's disk is full: fsrep gave up its \d+ KiB reserve to save its state$"
HARD_LINK_FALLBACK = (r" WARNING \S+: group \S+: (?:resync failed|link to \S+ lost" + AT + r": resync abandoned): a "
                      r"hard link \(b'.*'\) changed while out of sync$")  # a quick resync gives up for the whole tree
UNCLEAN_SHUTDOWN = (r" WARNING \S+: group \S+: the primary daemon did not shut down cleanly; \d+ active extents "
                    r"from the activity log are dirty$")


def capped(memory_cap: int | None, open_files: int | None = None) -> list[str]:
    """The command prefix that starts a daemon under an address-space cap,
    so a runaway allocation fails it instead of exhausting the machine, and
    with *open_files* as both its soft and hard open-file limit."""
    limits = [f"--as={memory_cap}"] if memory_cap else []
    limits += [f"--nofile={open_files}:{open_files}"] if open_files else []
    return ["prlimit", *limits, "--"] if limits else []


def run_fsrep(*args: str, check: bool = True, timeout: float = 90,
              memory_cap: int | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*capped(memory_cap), *FSREP, *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"fsrep {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def fsrep_resync(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``fsrep-resync`` and return what it did (the caller checks the exit)."""
    return subprocess.run([*RESYNC, *args], capture_output=True, text=True, timeout=timeout)


def write_random(path: Path, mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MiB))


def wait_for(predicate, what: str, timeout: float = DEADLINE, step: float = 0.05):
    """Poll *predicate* until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


def deep_chain(top: Path, levels: int, *, name: str = "d", file_every: int = 0) -> bytes:
    """A chain of *levels* directories called *name* below *top*, made by
    descriptor (its path may be longer than PATH_MAX), with a file ``f<i>``
    every *file_every* levels and ``f`` at the bottom. Returns its path."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(levels):
            os.mkdir(name, dir_fd=fd)
            below = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
            if file_every and i % file_every == 0:
                os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    return b"/".join([os.fsencode(name)] * levels)


def empty_files(directory: Path, count: int, prefix: str = "entry") -> set[bytes]:
    """*count* empty files ``PREFIX-NNNNN`` in *directory*; returns their names."""
    names = {f"{prefix}-{i:05d}".encode() for i in range(count)}
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    return names


def entry_states(top: Path) -> dict[str, tuple]:
    """What a replicated operation could change of each entry below *top*
    (by path relative to it): its inode, mode, owner, size, mtime, ctime,
    link count, content or link target, and extended attributes; links never
    followed. Not atimes: reading changes them."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in ["", *dirnames, *filenames]:
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            content: bytes | str | None = None
            if stat.S_ISREG(st.st_mode):
                content = Path(p).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            xattrs = {} if stat.S_ISLNK(st.st_mode) else {
                n: os.getxattr(p, n, follow_symlinks=False) for n in os.listxattr(p, follow_symlinks=False)}
            out[os.path.relpath(p, top)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                                            st.st_ctime_ns, st.st_nlink, st.st_ino, content, xattrs)
    return out


def assert_same_tree(a: Path, b: Path) -> None:
    differences = tree_differences(a, b)
    assert not differences, "trees differ:\n" + "\n".join(differences)
    assert tree_digest(a), "compared two empty trees"


@dataclass
class Secondary:
    store: Path
    key: Path
    proc: subprocess.Popen | None = None
    port: int = 0
    memory_cap: int | None = None
    args: tuple[str, ...] = ()  # more options of fsrep serve (e.g. --tls-cert ...)
    open_files: int | None = None

    def start(self) -> None:
        listen = f"127.0.0.1:{self.port}"
        command = [*capped(self.memory_cap, self.open_files), *FSREP, "serve", str(self.store), "--listen", listen,
                   "--key-file", str(self.key), *self.args]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()  # the daemon prints this line once it listens
        if not line.startswith("listening on "):
            self.proc.kill()
            raise AssertionError(f"fsrep serve did not start: {line!r}; see {self.store}/.fsrep/serve.log")
        self.port = int(line.rsplit(":", 1)[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=DEADLINE)
        self.proc = None

    def replica_root(self) -> Path:
        roots = [p for p in self.store.iterdir() if p.name != ".fsrep"]
        assert len(roots) == 1, f"expected one replica in {self.store}, found {roots}"
        return roots[0]


@dataclass
class Cluster:
    base: Path
    primary_store: Path = field(init=False)
    mnt: Path = field(init=False)
    key: Path = field(init=False)
    secondary: Secondary = field(init=False)
    mounted: bool = False
    proxy: FaultProxy | None = None  # when set, mount() reaches the secondary through it
    memory_cap: int | None = None  # bytes of address space for the primary daemon
    complaints: dict[Path, list[str]] = field(default_factory=dict, init=False)  # by log, read at cleanup

    @property
    def secondary_address(self) -> str:
        """Where the primary connects: the proxy when there is one."""
        return self.proxy.address if self.proxy is not None else self.secondary.address

    def __post_init__(self) -> None:
        self.primary_store = self.base / "primary"
        self.mnt = self.base / "mnt"
        self.key = self.base / "key"
        for d in (self.primary_store, self.mnt, self.base / "secondary"):
            d.mkdir()
        run_fsrep("keygen", str(self.key))
        self.secondary = Secondary(self.base / "secondary", self.key)
        _CLUSTERS.append(self)

    def mount(self, *extra: str, policy: str = "sync", check: bool = True) -> subprocess.CompletedProcess[str]:
        done = run_fsrep("mount", str(self.primary_store), str(self.mnt), "--secondary", self.secondary_address,
                         "--key-file", str(self.key), "--policy", policy, *extra, check=check,
                         memory_cap=self.memory_cap)
        self.mounted = done.returncode == 0
        return done

    def umount(self) -> None:
        run_fsrep("umount", str(self.mnt))
        self.mounted = False

    def kill_primary(self) -> None:
        """``kill -9`` the mount's daemon and wait until it is gone; its
        mount point is left behind, dead (ENOTCONN)."""
        pid = int((self.primary_store / ".fsrep" / "lock").read_text().split()[2])
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), "the daemon to die")

    def groups(self) -> dict[str, dict]:
        """Every group's status, by path ("/" for the default group)."""
        groups = json.loads(run_fsrep("status", str(self.mnt), "--json").stdout)["groups"]
        return {group["path"]: group for group in groups}

    def status(self) -> dict:
        groups = self.groups()
        assert len(groups) == 1, f"expected one group, found {sorted(groups)}"
        return groups["/"]

    def wait_state(self, state: str, timeout: float = DEADLINE) -> dict:
        return wait_for(lambda: (s := self.status())["state"] == state and s, f"state {state}", timeout)

    def assert_replicated(self) -> None:
        """Unmount, then compare the primary store and the replica."""
        if self.mounted:
            self.umount()
        assert_same_tree(self.primary_store, self.secondary.replica_root())

    def primary_pid(self) -> int:
        """The process id of the mounted primary daemon (from its store lock)."""
        return int((self.primary_store / ".fsrep" / "lock").read_text().split()[2])

    def primary_log(self) -> str:
        return (self.primary_store / ".fsrep" / "fsrep.log").read_text()

    def read_complaints(self) -> list[str]:
        """The WARNING, ERROR and traceback lines of every daemon log of the
        cluster's stores and of any other store a test made beside them,
        each prefixed with its store. A log no longer there (its tmpfs
        gone) keeps what was read before."""
        stores = {self.primary_store, self.secondary.store, *self.base.iterdir()} - {self.mnt}
        for store in sorted(stores):
            try:
                for log in (store / ".fsrep").glob("*.log"):
                    lines = log.read_text(errors="replace").splitlines()
                    name = store.relative_to(self.base) if store.is_relative_to(self.base) else store
                    self.complaints[log] = [f"{name}: {line}" for line in lines if COMPLAINT.search(line)]
            except OSError:  # not a store (a file, a dead mount point)
                continue
        return [line for lines in self.complaints.values() for line in lines]

    def cleanup(self) -> None:
        """Stop both daemons, then read their logs' complaints (before a
        tmpfs under a store goes away with them)."""
        if self.mounted or _is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        _wait_daemon_gone(self.primary_store)
        self.secondary.stop(signal.SIGKILL)
        self.read_complaints()


def expected_log(node: pytest.Item) -> list[re.Pattern[str]]:
    """The patterns of the test's ``expect_log`` markers, each refused if
    it would match any line at all."""
    patterns = [re.compile(p) for marker in node.iter_markers("expect_log") for p in marker.args]
    for pattern in patterns:
        if pattern.search(""):
            raise pytest.UsageError(f"{node.nodeid}: expect_log({pattern.pattern!r}) matches every line; "
                                    f"name the complaint the test expects")
    return patterns


def assert_no_unexpected_log(clusters: list[Cluster], allowed: list[re.Pattern[str]]) -> None:
    """Fail on any complaint in the clusters' logs that no *allowed*
    pattern names."""
    lines = [line for cluster in clusters for line in cluster.read_complaints()]
    unexpected = [line for line in lines if not any(p.search(line) for p in allowed)]
    if unexpected:
        shown = "\n".join(unexpected[:20]) + (f"\n... and {len(unexpected) - 20} more" if len(unexpected) > 20 else "")
        pytest.fail(f"the daemons logged what this test does not expect (name what a fault causes with "
                    f"@pytest.mark.expect_log(PATTERN)):\n{shown}", pytrace=False)


def _is_mounted(path: Path) -> bool:
    target = str(path.resolve()) if path.exists() else str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def _wait_daemon_gone(store: Path) -> None:
    lock = store / ".fsrep" / "lock"
    if not lock.exists():
        return
    text = lock.read_text().split()
    if len(text) >= 3 and text[2].isdigit():
        pid = int(text[2])
        try:
            wait_for(lambda: not Path(f"/proc/{pid}").exists(), f"daemon {pid} to exit", timeout=10)
        except AssertionError:
            os.kill(pid, signal.SIGKILL)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """A skipped test is a failed test here: nothing may pass by not running."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_CALL_REPORT] = report
    if report.skipped:
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} was skipped; skipping is not allowed in this suite"


@pytest.fixture(scope="session", autouse=True)
def fuse_available() -> None:
    """FUSE is required: a missing /dev/fuse or fusermount3 fails loudly."""
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: FUSE tests cannot run (load the fuse module)", pytrace=False)
    if shutil.which("fusermount3") is None:
        pytest.fail("fusermount3 is missing: install the fuse3 package (make deps does)", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the FUSE tests run as root (allow_other, chown to other users)", pytrace=False)


@pytest.fixture(autouse=True)
def no_unexpected_log(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every cluster a test makes (the fixture's or its own) has its logs
    read at the test's teardown — after the cluster's, since an autouse
    fixture is set up first — unless the test already failed, which is
    the news then."""
    allowed = expected_log(request.node)
    first = len(_CLUSTERS)
    yield
    made = _CLUSTERS[first:]
    del _CLUSTERS[first:]
    report = request.node.stash.get(_CALL_REPORT, None)
    if made and report is not None and report.passed:
        assert_no_unexpected_log(made, allowed)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A running secondary and an empty primary store, not yet mounted."""
    c = Cluster(tmp_path)
    c.secondary.start()
    try:
        yield c
    finally:
        c.cleanup()


@pytest.fixture
def mounted(cluster: Cluster) -> Cluster:
    """A primary mounted and InSync with a running secondary."""
    cluster.mount()
    assert cluster.status()["state"] == "InSync"
    return cluster


@pytest.fixture
def proxied(cluster: Cluster) -> Iterator[Cluster]:
    """A running secondary behind a FaultProxy (``proxied.proxy``), not yet
    mounted: ``mount()`` connects through the proxy. At teardown the link is
    restored (so the daemon can drain), the primary unmounted, then the
    proxy closed — whether the test passed or not."""
    with FaultProxy(cluster.secondary.address) as proxy:
        cluster.proxy = proxy
        try:
            yield cluster
        finally:
            with contextlib.suppress(ProxyError):  # a failed proxy raises again when closed
                proxy.restore()
            cluster.cleanup()
