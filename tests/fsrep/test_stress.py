"""A random workload from several processes while the link is cut and
restored; afterwards the group is InSync and the trees are identical."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.conftest import HARD_LINK_FALLBACK, LINK_CLOSED, SESSION_CLOSED, Cluster, wait_for

STRESS = r"""
import errno, os, random, sys
root, seed, ops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
mine = os.path.join(root, f"p{seed}")
os.makedirs(mine, exist_ok=True)
def pick(kind=None):
    names = []
    for dirpath, dirnames, filenames in os.walk(mine):
        found = filenames if kind == "f" else dirnames if kind == "d" else filenames + dirnames
        names += [os.path.join(dirpath, n) for n in found]
    return rng.choice(names) if names else None
def new_name():
    parent = pick("d") or mine
    return os.path.join(parent, f"n{rng.randrange(10**6)}")
for _ in range(ops):
    op = rng.choice("wwwwtcmrluxsa")
    try:
        if op == "w":
            path = pick("f") or new_name()
            with open(path, "r+b" if os.path.exists(path) else "wb") as f:
                f.seek(rng.randrange(0, 200000))
                f.write(os.urandom(rng.randrange(1, 70000)))
                if rng.random() < 0.1:
                    os.fsync(f.fileno())
        elif op == "t" and (path := pick("f")):
            os.truncate(path, rng.randrange(0, 300000))
        elif op == "c":
            with open(new_name(), "wb") as f:
                f.write(os.urandom(rng.randrange(0, 5000)))
        elif op == "m":
            os.mkdir(new_name())
        elif op == "r" and (path := pick()):
            os.rename(path, new_name())
        elif op == "l" and (path := pick("f")):
            os.link(path, new_name())
        elif op == "u" and (path := pick("f")):
            os.unlink(path)
        elif op == "x" and (path := pick("f")):
            os.setxattr(path, "user.r", os.urandom(8))
        elif op == "s":
            os.symlink("dangling-or-not", new_name())
        elif op == "a" and (path := pick("f")):
            os.chmod(path, rng.choice([0o600, 0o644, 0o755]))
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR,
                             errno.EINVAL):
            raise
"""


@pytest.mark.expect_log(LINK_CLOSED, HARD_LINK_FALLBACK, SESSION_CLOSED)
def test_random_workload_across_link_cuts_ends_identical(cluster: Cluster) -> None:
    cluster.mount("--ack-timeout", "3")
    procs = [subprocess.Popen([sys.executable, "-c", STRESS, str(cluster.mnt), str(seed), "600"])
             for seed in range(3)]
    try:
        for threshold in (150, 400):
            wait_for(lambda t=threshold: cluster.status()["last_acked_seq"] > t, "progress before a cut")
            cluster.secondary.stop(signal.SIGKILL)
            wait_for(lambda: cluster.status()["state"] == "OutOfSync", "the cut to be noticed")
            cluster.secondary.start()
        assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    finally:
        for p in procs:
            p.kill()
    cluster.wait_state("InSync", timeout=120)
    cluster.assert_replicated()
