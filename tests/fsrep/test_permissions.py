"""Services running as other users get ordinary permission checks, and what
they create keeps their uid/gid on both sides."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import Cluster

AS_USER = """
import os, sys
os.chdir(sys.argv[3])  # as root: the test's temp parents are private to root
os.setgroups([]); os.setgid(int(sys.argv[2])); os.setuid(int(sys.argv[1]))
os.umask(0o022)
root = "."
with open(os.path.join(root, "shared", "mine"), "w") as f:
    f.write("made by " + sys.argv[1])
os.mkdir(os.path.join(root, "shared", "mydir"))
os.symlink("mine", os.path.join(root, "shared", "mylink"))
results = []
for action in (lambda: open(os.path.join(root, "rootonly"), "a"),
               lambda: os.unlink(os.path.join(root, "sticky", "roots")),
               lambda: os.chmod(os.path.join(root, "rootonly"), 0o777),
               lambda: os.chown(os.path.join(root, "shared", "mine"), 0, 0)):
    try:
        action()
        results.append("allowed")
    except PermissionError:
        results.append("denied")
print(",".join(results))
"""


def test_other_users_get_permission_checks_and_keep_ownership(mounted: Cluster) -> None:
    m = mounted.mnt
    (m / "shared").mkdir(mode=0o777)
    os.chmod(m / "shared", 0o777)
    (m / "rootonly").write_text("root's")
    os.chmod(m / "rootonly", 0o644)
    (m / "sticky").mkdir()
    os.chmod(m / "sticky", 0o1777)
    (m / "sticky" / "roots").write_text("root's file in a sticky dir")
    done = subprocess.run([sys.executable, "-c", AS_USER, "1000", "1000", str(m)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "denied,denied,denied,denied"
    for name in ("mine", "mydir"):
        st = os.lstat(m / "shared" / name)
        assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert os.lstat(m / "shared" / "mylink").st_uid == 1000
    assert oct(os.stat(m / "shared" / "mine").st_mode & 0o777) == oct(0o644)
    mounted.assert_replicated()


def test_setgid_directory_passes_its_group_on(mounted: Cluster) -> None:
    d = mounted.mnt / "team"
    d.mkdir()
    os.chown(d, 0, 4242)
    os.chmod(d, 0o2775)
    (d / "file").write_text("x")
    (d / "sub").mkdir()
    assert os.stat(d / "file").st_gid == 4242
    assert os.stat(d / "sub").st_gid == 4242
    assert os.stat(d / "sub").st_mode & 0o2000
    mounted.assert_replicated()
