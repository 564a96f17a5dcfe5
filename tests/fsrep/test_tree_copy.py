"""A group's tree copied and caught up (``_tree_copy``), on real directories."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from fsrep._digest import tree_differences
from fsrep._tree import Tree
from fsrep._tree_copy import Cancelled, TreeCopy, emptied

MIB = 1024 * 1024


def _source(root: Path) -> None:
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "e" / "f").write_bytes(b"x" * 10_000)
    with open(root / "sparse", "wb") as f:
        f.write(b"head")
        f.seek(8 * MIB)
        f.write(b"tail")
    os.link(root / "sparse", root / "d" / "hard")
    os.symlink("../sparse", root / "d" / "link")
    os.mkfifo(root / "fifo")
    os.setxattr(root / "d" / "e" / "f", "user.colour", b"blue")
    os.chmod(root / "d", 0o750)
    os.utime(root / "d" / "e", ns=(1, 2_000_000_000))


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path, TreeCopy]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    _source(src)
    return src, dst, TreeCopy(Tree(src), Tree(dst))


def test_a_whole_copy_is_the_same_tree_with_holes_and_hard_links(trees: tuple[Path, Path, TreeCopy]) -> None:
    src, dst, copy = trees
    copied = copy.copy_all()
    assert tree_differences(src, dst) == []
    assert copied < 2 * MIB  # the hole was not copied
    assert os.stat(dst / "sparse").st_blocks * 512 < MIB
    assert os.stat(dst / "sparse").st_ino == os.stat(dst / "d" / "hard").st_ino
    assert copy.inodes[os.stat(src / "d" / "e" / "f").st_ino] == os.stat(dst / "d" / "e" / "f").st_ino


def test_a_catch_up_makes_the_copy_follow_what_changed(trees: tuple[Path, Path, TreeCopy]) -> None:
    src, dst, copy = trees
    copy.copy_all()
    ino = {p: os.stat(src / p).st_ino for p in ["", "d", "d/e", "d/e/f", "sparse"]}
    with open(src / "sparse", "r+b") as f:  # a write in the middle of the hole
        f.seek(4 * MIB)
        f.write(b"middle")
    os.rename(src / "d" / "e", src / "e2")  # a directory renamed
    (src / "new").write_bytes(b"fresh")
    (src / "tmp").write_bytes(b"replacement")
    os.rename(src / "tmp", src / "d" / "link")  # a rename over an entry
    os.unlink(src / "fifo")
    done = copy.catch_up(dirs=[(ino[""], b""), (ino["d"], b"d")],
                         files=[(ino["sparse"], b"sparse", [(4 * MIB, 4096)]),
                                (ino["d/e/f"], b"d/e/f", [(0, 4096)])])
    assert tree_differences(src, dst) == []
    assert done.missed_files == [(ino["d/e/f"], b"d/e/f")]  # moved with its directory, which was copied again
    assert os.stat(dst / "sparse").st_blocks * 512 < MIB


def test_a_directory_that_moved_is_handed_back(trees: tuple[Path, Path, TreeCopy]) -> None:
    src, _, copy = trees
    copy.copy_all()
    ino = os.stat(src / "d" / "e").st_ino
    os.rename(src / "d" / "e", src / "e2")
    assert copy.catch_up(dirs=[(ino, b"d/e")], files=[]).missed_dirs == [(ino, b"d/e")]


def test_a_cancelled_copy_stops_and_can_be_emptied(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    _source(src)
    asked = itertools.count()
    copy = TreeCopy(Tree(src), Tree(dst), cancelled=lambda: next(asked) > 3)
    with pytest.raises(Cancelled):
        copy.copy_all()
    emptied(Tree(dst))
    assert list(dst.iterdir()) == []


def test_a_catch_up_keeps_a_new_hard_link_and_a_directorys_new_mode(trees: tuple[Path, Path, TreeCopy]) -> None:
    src, dst, copy = trees
    copy.copy_all()
    f = os.stat(src / "d" / "e" / "f").st_ino
    os.link(src / "d" / "e" / "f", src / "second")  # what a link marks: the new name's directory, the file's meta
    os.chmod(src / "d" / "e", 0o701)  # a directory's metadata, marked as a file's
    os.lchown(src / "d" / "link", 4321, 4321)
    ino = {p: os.stat(src / p, follow_symlinks=False).st_ino for p in ["", "d/e", "d/link"]}
    done = copy.catch_up(dirs=[(ino[""], b"")], files=[(f, b"d/e/f", []), (ino["d/e"], b"d/e", []),
                                                       (ino["d/link"], b"d/link", [])])
    assert (done.missed_dirs, done.missed_files) == ([], [])
    assert tree_differences(src, dst) == []
    assert os.stat(dst / "second").st_ino == os.stat(dst / "d" / "e" / "f").st_ino
    assert os.lstat(dst / "d" / "link").st_uid == 4321


def test_a_rename_is_caught_up_without_copying_what_it_moved(trees: tuple[Path, Path, TreeCopy]) -> None:
    src, dst, copy = trees
    (src / "big").write_bytes(os.urandom(4 * MIB))
    copy.copy_all()
    ino = {p: os.stat(src / p).st_ino for p in ["", "d", "d/e"]}
    os.rename(src / "big", src / "d" / "big")  # a file into another directory
    os.rename(src / "d" / "e", src / "e")  # a directory out of its parent
    moved = os.stat(dst / "big").st_ino
    done = copy.catch_up(dirs=[(ino[""], b""), (ino["d"], b"d")], files=[])
    assert tree_differences(src, dst) == []
    assert done.copied == 0, f"{done.copied} bytes copied for two renames"
    assert os.stat(dst / "d" / "big").st_ino == moved
    assert not (dst / ".fsrep").exists(), "what was set aside is left"


def test_a_new_file_given_a_removed_ones_inode_number_is_copied_not_taken_back(tmp_path: Path) -> None:
    """``rm a; touch b``: ext4 gives b a's freed number at once, so the
    number alone would take a's copy back as b."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    reused = False
    for attempt in range(20):  # bounded: reuse of the number is the file system's choice
        (src / "a").write_bytes(b"old content %d" % attempt)
        copy = TreeCopy(Tree(src), Tree(dst))
        copy.copy_all()
        old = os.stat(src / "a").st_ino
        os.unlink(src / "a")
        (src / "b").write_bytes(b"")
        reused = os.stat(src / "b").st_ino == old
        copy.catch_up(dirs=[(os.stat(src).st_ino, b"")], files=[])
        assert tree_differences(src, dst) == []
        assert (dst / "b").read_bytes() == b""
        if reused:
            break
        os.unlink(src / "b")
        emptied(Tree(dst))
    assert reused, "the file system never gave the number again: nothing was checked"
