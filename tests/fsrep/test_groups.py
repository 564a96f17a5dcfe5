"""Declared consistency groups on real mounts: each group has its own
session, state, tracking and replica (``SECONDARY/<group-id>/``), so a cut
link stops one group only; a change never spans two groups; declaring or
retiring a group moves its subtree between replicas; and, without a
mount, which group a path belongs to."""

from __future__ import annotations

import errno
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsrep._config import GroupRecord, GroupStore
from fsrep._control import request
from fsrep._digest import tree_differences
from fsrep._groups import Group, Groups
from fsrep._splitter import Relationship
from fsrep._tree import Tree
from tests.conftest import (
    LINK_CLOSED,
    SESSION_CLOSED,
    Cluster,
    assert_same_tree,
    fsrep_resync,
    run_fsrep,
    wait_for,
    write_random,
)
from tests.proxy import FaultProxy

RETIRED = (r" WARNING \S+: group \S+ \(/vm1\) retired: its subtree joins group \S+ \(/\); its replica on \S+ is no "
           r"longer updated$")

KiB = 1024
RECONNECT_DEADLINE = 30.0
NOTICE_DEADLINE = 10.0


def mount_with_config(cluster: Cluster, config: str, *extra: str) -> None:
    path = cluster.base / "fsrep.toml"
    path.write_text(config)
    run_fsrep("mount", str(cluster.primary_store), str(cluster.mnt), "--key-file", str(cluster.key),
              "--config", str(path), *extra)
    cluster.mounted = True


def assert_group_replicated(cluster: Cluster, groups: dict[str, dict]) -> None:
    """Each group's subtree of the primary store equals its replica; the
    default group's replica holds none of the declared groups' subtrees."""
    declared = [path.strip("/") for path in groups if path != "/"]
    for path, group in groups.items():
        replica = cluster.secondary.store / group["id"]
        if path == "/":
            differences = tree_differences(cluster.primary_store, replica, skip=declared)
        else:
            differences = tree_differences(cluster.primary_store / path.strip("/"), replica)
        assert not differences, f"group {path} differs from its replica:\n" + "\n".join(differences)
    assert not any((cluster.secondary.store / groups["/"]["id"] / d).exists() for d in declared), \
        "a declared group's subtree is in the default group's replica"


@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED)
def test_several_groups_one_cut_and_the_others_stay_in_sync(cluster: Cluster) -> None:
    with FaultProxy(cluster.secondary.address) as proxy:
        mount_with_config(cluster, f'secondary = "{cluster.secondary.address}"\n'
                                   f'[[group]]\npath = "vms/vm1"\nsecondary = "{proxy.address}"\n'
                                   f'[[group]]\npath = "vm2"\n')
        groups = cluster.groups()
        assert sorted(groups) == ["/", "/vm2", "/vms/vm1"], groups
        assert {g["state"] for g in groups.values()} == {"InSync"}, groups
        assert len({g["id"] for g in groups.values()}) == 3, "groups share an id"
        vm1, vm2 = cluster.mnt / "vms" / "vm1", cluster.mnt / "vm2"
        for root in (cluster.mnt, vm1, vm2):
            write_random(root / "disk", 2)
        proxy.cut()
        for root in (cluster.mnt, vm1, vm2):  # vm1's write goes local and dirty; the others replicate
            with open(root / "disk", "r+b") as f:
                os.pwrite(f.fileno(), b"x" * 3 * KiB, 100 * KiB)
            (root / "during").write_bytes(os.urandom(5 * KiB))
        wait_for(lambda: cluster.groups()["/vms/vm1"]["state"] == "OutOfSync", "vm1 out of sync",
                 timeout=NOTICE_DEADLINE)
        groups = cluster.groups()
        assert groups["/"]["state"] == "InSync", groups
        assert groups["/vm2"]["state"] == "InSync", groups
        assert groups["/vms/vm1"]["dirty_bytes"] > 0, groups["/vms/vm1"]
        # What the other groups wrote is on their replicas already, the link of vm1 still cut.
        for path in ("/", "/vm2"):
            assert (cluster.secondary.store / groups[path]["id"] / "during").read_bytes() == \
                ((cluster.mnt if path == "/" else vm2) / "during").read_bytes()
        assert not (cluster.secondary.store / groups["/vms/vm1"]["id"] / "during").exists()
        proxy.restore()
        wait_for(lambda: cluster.groups()["/vms/vm1"]["connected"], "vm1 reconnected", timeout=RECONNECT_DEADLINE)
        done = fsrep_resync(str(cluster.mnt), "--json", timeout=RECONNECT_DEADLINE * 3)  # every group
        assert done.returncode == 0, done.stderr
        outcome = json.loads(done.stdout)
        assert sorted(g["group"] for g in outcome["groups"]) == sorted(g["id"] for g in groups.values())
        groups = cluster.groups()
        assert {g["state"] for g in groups.values()} == {"InSync"}, groups
        cluster.umount()
    assert_group_replicated(cluster, groups)


def test_a_change_never_spans_two_groups(cluster: Cluster) -> None:
    cluster.mount("--group", "vms/vm1", "--group", "vm2")
    vm1, vm2 = cluster.mnt / "vms" / "vm1", cluster.mnt / "vm2"
    (vm1 / "a").write_bytes(b"one")
    (cluster.mnt / "b").write_bytes(b"two")
    (vm1 / "dir").mkdir()
    cases = [
        (errno.EXDEV, lambda: os.rename(vm1 / "a", vm2 / "a")),
        (errno.EXDEV, lambda: os.rename(cluster.mnt / "b", vm1 / "b")),
        (errno.EXDEV, lambda: os.link(vm1 / "a", cluster.mnt / "a")),
        (errno.EBUSY, lambda: os.rename(vm2, cluster.mnt / "elsewhere")),
        (errno.EBUSY, lambda: os.rename(cluster.mnt / "vms", cluster.mnt / "elsewhere")),
        (errno.EBUSY, lambda: os.rmdir(vm2)),
        (errno.EBUSY, lambda: os.rename(vm1 / "dir", vm2)),
        (errno.EEXIST, lambda: os.mkdir(vm2)),
    ]
    for code, change in cases:
        with pytest.raises(OSError) as caught:
            change()
        assert caught.value.errno == code, (caught.value, code)
    os.rename(vm1 / "a", vm1 / "dir" / "a2")  # within a group: fine
    os.link(vm1 / "dir" / "a2", vm1 / "hard")
    os.chmod(vm1, 0o750)  # a group's root belongs to its group
    os.setxattr(vm2, "user.note", b"root of vm2")
    groups = cluster.groups()
    assert {g["state"] for g in groups.values()} == {"InSync"}, groups
    assert (cluster.secondary.store / groups["/vms/vm1"]["id"] / "dir" / "a2").read_bytes() == b"one"
    replica_vm2 = cluster.secondary.store / groups["/vm2"]["id"]
    assert os.getxattr(replica_vm2, "user.note") == b"root of vm2"
    assert (cluster.secondary.store / groups["/vms/vm1"]["id"]).stat().st_mode & 0o777 == 0o750
    cluster.umount()
    assert_group_replicated(cluster, groups)


@pytest.mark.expect_log(RETIRED)
def test_declaring_and_retiring_a_group_moves_its_subtree_between_replicas(cluster: Cluster) -> None:
    cluster.mount()
    (cluster.mnt / "vm1").mkdir()
    write_random(cluster.mnt / "vm1" / "disk", 1)
    (cluster.mnt / "vm1" / "conf").write_text("cpus=2\n")
    (cluster.mnt / "other").write_bytes(os.urandom(8 * KiB))
    default_id = cluster.status()["id"]
    cluster.umount()

    cluster.mount("--group", "vm1")
    groups = wait_for(lambda: (g := cluster.groups()) and all(x["state"] == "InSync" for x in g.values()) and g,
                      "every group InSync after declaring vm1", timeout=RECONNECT_DEADLINE)
    assert groups["/"]["id"] == default_id, "the default group changed identity"
    (cluster.mnt / "vm1" / "conf").write_text("cpus=4\n")
    cluster.umount()
    assert_group_replicated(cluster, groups)

    done = cluster.mount(check=False)  # forgetting a group is refused: its tracking would be lost
    assert done.returncode == 1, done.stderr
    assert "--retire vm1" in done.stderr, done.stderr
    cluster.mount("--retire", "vm1")  # its subtree joins the default group again
    wait_for(lambda: cluster.status()["state"] == "InSync", "InSync after retiring vm1", timeout=RECONNECT_DEADLINE)
    assert "group /vm1 was retired" in cluster.primary_log()
    cluster.umount()
    assert_same_tree(cluster.primary_store, cluster.secondary.store / default_id)  # vm1's old replica stays


def test_resync_of_one_group_by_path(cluster: Cluster) -> None:
    cluster.mount("--group", "vm1")
    (cluster.mnt / "vm1" / "f").write_bytes(os.urandom(10 * KiB))
    done = fsrep_resync(str(cluster.mnt), "--group", "/vm1", "--mode", "checksum", "--json")
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["group"] == cluster.groups()["/vm1"]["id"], outcome
    assert outcome["verified"], outcome
    done = fsrep_resync(str(cluster.mnt), "--group", "nope")
    assert done.returncode == 1, done.stderr
    assert "no consistency group 'nope'" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


@pytest.mark.parametrize(("config", "flags", "message"), [
    ('[[group]]\npath = "a"\n[[group]]\npath = "a/b"\n', [], "overlap"),
    ('[[group]]\npath = "../x"\n', [], "subdirectory of the mount"),
    ('[[group]]\npath = "a"\npolicy = "fast"\n', [], "unknown policy 'fast'"),
    ('[[group]]\npath = "a"\nsize = 3\n', [], "unknown group setting 'size'"),
    ('groups = 1\n', [], "unknown setting 'groups'"),
    ('[[group\n', [], "not valid TOML"),
    ('', ["--group", ".fsrep/x"], "subdirectory of the mount"),
    ('[[group]]\npath = "a"\n', ["--group", "a"], "declared twice"),
])
def test_bad_group_declarations_get_one_line(cluster: Cluster, config: str, flags: list[str], message: str) -> None:
    path = cluster.base / "bad.toml"
    path.write_text(config)
    done = run_fsrep("mount", str(cluster.primary_store), str(cluster.mnt), "--key-file", str(cluster.key),
                     "--secondary", cluster.secondary.address, "--config", str(path), *flags, check=False)
    assert done.returncode == 1, done
    assert message in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_a_mount_without_a_secondary_is_refused(cluster: Cluster) -> None:
    done = run_fsrep("mount", str(cluster.primary_store), str(cluster.mnt), "--key-file", str(cluster.key),
                     check=False)
    assert done.returncode == 1, done.stderr
    assert "no secondary" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


def test_a_group_root_that_is_a_file_is_refused(cluster: Cluster) -> None:
    (cluster.primary_store / "vm1").write_bytes(b"not a directory")
    done = cluster.mount("--group", "vm1", check=False)
    assert done.returncode == 1, done.stderr
    assert "plain directories of the store" in done.stderr, done.stderr


def all_in_sync(cluster: Cluster) -> dict[str, dict] | bool:
    groups = cluster.groups()
    return all(g["state"] == "InSync" for g in groups.values()) and groups


@pytest.mark.expect_log(RETIRED)
def test_a_retired_groups_subtree_is_copied_whole_into_the_default_replica(cluster: Cluster) -> None:
    """The default replica's copy of vm1 is from before vm1 was declared:
    same sizes, other bytes. Retiring vm1 must refresh it, not trust it."""
    cluster.mount()
    (cluster.mnt / "vm1").mkdir()
    (cluster.mnt / "vm1" / "f").write_bytes(b"A" * 8192)
    default_id = cluster.status()["id"]
    cluster.umount()
    cluster.secondary.stop()
    cluster.mount("--group", "vm1")  # sync: serves OutOfSync without its secondary
    (cluster.mnt / "vm1" / "f").write_bytes(b"B" * 8192)
    cluster.umount()
    cluster.secondary.start()
    cluster.mount("--retire", "vm1")
    cluster.wait_state("InSync", timeout=RECONNECT_DEADLINE)
    cluster.umount()
    assert (cluster.secondary.store / default_id / "vm1" / "f").read_bytes() == b"B" * 8192
    assert_same_tree(cluster.primary_store, cluster.secondary.store / default_id)


def test_declaring_a_nested_group_makes_its_parents_on_the_default_replica(cluster: Cluster) -> None:
    cluster.mount()
    (cluster.mnt / "x").write_bytes(b"x")
    cluster.umount()
    cluster.mount("--group", "vms/vm1")  # vms does not exist yet: the mount makes it
    wait_for(lambda: all_in_sync(cluster), "every group InSync", timeout=RECONNECT_DEADLINE)
    (cluster.mnt / "vms" / "notes").write_bytes(b"default group, next to vm1")
    groups = cluster.groups()
    assert groups["/"]["state"] == "InSync", groups
    cluster.umount()
    assert "whole tree" not in cluster.primary_log().split("vms/vm1 was declared")[-1]
    assert_group_replicated(cluster, groups)


@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED)
def test_a_write_to_an_unlinked_file_of_a_group_does_not_depend_on_the_default_group(cluster: Cluster) -> None:
    with FaultProxy(cluster.secondary.address) as proxy:
        mount_with_config(cluster, f'secondary = "{proxy.address}"\npolicy = "strict"\n'
                                   f'[[group]]\npath = "vm1"\npolicy = "sync"\n'
                                   f'secondary = "{cluster.secondary.address}"\n')
        fd = os.open(cluster.mnt / "vm1" / "scratch", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            os.unlink(cluster.mnt / "vm1" / "scratch")
            proxy.cut()
            wait_for(lambda: cluster.groups()["/"]["state"] != "InSync", "default group out of sync",
                     timeout=NOTICE_DEADLINE)
            assert os.pwrite(fd, b"data", 0) == 4
            assert os.pread(fd, 4, 0) == b"data"
            assert cluster.groups()["/vm1"]["state"] == "InSync"
        finally:
            os.close(fd)
            proxy.restore()
        wait_for(lambda: cluster.groups()["/"]["connected"], "default group reconnected", timeout=RECONNECT_DEADLINE)
        cluster.umount()


def test_a_group_path_through_a_symlink_is_refused_and_nothing_is_made_outside(cluster: Cluster) -> None:
    outside = cluster.base / "outside"
    outside.mkdir()
    (cluster.primary_store / "vms").symlink_to(outside)
    done = cluster.mount("--group", "vms/vm1", check=False)
    assert done.returncode == 1, done.stderr
    assert "plain directories of the store" in done.stderr, done.stderr
    assert not (outside / "vm1").exists(), "the mount made a directory outside the store"


def test_a_resync_request_naming_a_group_by_number_gets_an_error(cluster: Cluster) -> None:
    cluster.mount()
    reply = request(cluster.primary_store / ".fsrep", {"cmd": "resync", "group": 5})
    assert "not 5" in reply.get("error", ""), reply
    assert cluster.status()["state"] == "InSync"


def test_a_hard_link_across_a_new_group_boundary_is_refused(cluster: Cluster) -> None:
    cluster.mount()
    (cluster.mnt / "vm1").mkdir()
    (cluster.mnt / "vm1" / "disk").write_bytes(b"A" * 8192)
    os.link(cluster.mnt / "vm1" / "disk", cluster.mnt / "backup")
    cluster.umount()
    done = cluster.mount("--group", "vm1", check=False)
    assert done.returncode == 1, done.stderr
    assert "vm1/disk has a hard link outside the group" in done.stderr, done.stderr


def test_dot_fsrep_is_reserved_at_every_group_root(cluster: Cluster) -> None:
    (cluster.primary_store / "vm1" / ".fsrep").mkdir(parents=True)
    done = cluster.mount("--group", "vm1", check=False)
    assert done.returncode == 1, done.stderr
    assert "reserved for fsrep's state" in done.stderr, done.stderr
    (cluster.primary_store / "vm1" / ".fsrep").rmdir()
    cluster.mount("--group", "vm1")
    with pytest.raises(PermissionError):
        (cluster.mnt / "vm1" / ".fsrep").mkdir()
    (cluster.mnt / "vm1" / "sub").mkdir()
    (cluster.mnt / "vm1" / "sub" / ".fsrep").mkdir()  # below a group's root it is an ordinary name
    assert ".fsrep" not in os.listdir(cluster.mnt / "vm1")
    assert {g["state"] for g in cluster.groups().values()} == {"InSync"}
    cluster.umount()


# --- routing, without a mount ------------------------------------------------------------------------------


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[Groups]:
    """The groups of a store declaring /vms/vm1 and /vm2 (relationships
    that never connect)."""
    store = tmp_path / "store"
    for path in ("vms/vm1", "vm2"):
        (store / path).mkdir(parents=True)
    whole = Tree(store)
    groups = []
    for path, tree in (("", whole.subtree(hidden=[b"vms/vm1", b"vm2"])), ("vms/vm1", whole.subtree(b"vms/vm1")),
                       ("vm2", whole.subtree(b"vm2"))):
        record = GroupRecord(id=str(uuid.uuid4()), path=path, policy="sync", secondary="127.0.0.1:9")
        groups.append(Group(Relationship(record, GroupStore(str(store)), b"k" * 32), tree, path.encode()))
    yield Groups(groups)
    for group in groups:
        group.tree.close()
    whole.close()


def test_a_path_belongs_to_the_group_whose_root_holds_it(routed: Groups) -> None:
    default, vm1, vm2 = routed.all
    assert routed.route(b"vms/vm1/disk") == (vm1, b"disk")
    assert routed.route(b"vms/vm1") == (vm1, b"")
    assert routed.route(b"vm2/a/b") == (vm2, b"a/b")
    assert routed.route(b"vms/vm10") == (default, b"vms/vm10")  # a name that starts like a root is not in it
    assert routed.route(b"vms") == (default, b"vms")
    assert [g.depth for g in routed.all] == [0, 2, 1]


def test_a_group_root_and_the_directories_above_it_cannot_be_removed_or_renamed(routed: Groups) -> None:
    for path in (b"", b"vms", b"vms/vm1", b"vm2"):
        with pytest.raises(OSError) as caught:
            routed.claim(path, errno.EBUSY)
        assert caught.value.errno == errno.EBUSY, path
    assert routed.claim(b"vms/other", errno.EBUSY) == (routed.default, b"vms/other")


def test_a_rename_or_link_across_two_groups_is_exdev(routed: Groups) -> None:
    default, vm1, _ = routed.all
    assert routed.same(b"vms/vm1/a", b"vms/vm1/sub/b") == (vm1, b"a", b"sub/b")
    with pytest.raises(OSError) as caught:
        routed.same(b"vms/vm1/a", b"vm2/a")
    assert caught.value.errno == errno.EXDEV
    with pytest.raises(OSError) as caught:
        routed.same(b"top", b"vms/vm1/top")
    assert caught.value.errno == errno.EXDEV


def test_a_group_is_found_by_its_id_or_its_path(routed: Groups) -> None:
    _, vm1, vm2 = routed.all
    assert routed.find(vm1.rel.record.id) is vm1
    assert routed.find("/vms/vm1") is vm1
    assert routed.find("vm2/") is vm2
    assert routed.find("/") is routed.default
    assert routed.find("vms") is None
    assert routed.find(None) is None  # several groups: one must be named
