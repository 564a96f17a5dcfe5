"""docs/operations.md names only what exists: every ``fsrep SUBCOMMAND``,
``fsrep-resync`` and ``fsrep-move`` command written in its code blocks and
code spans is read, and its subcommand and each of its ``--flags`` looked
up in the real parsers; every option of a ``fuse.fsrep`` mount line (fstab,
``mount -o``, a mount unit's ``Options=``) is an option of ``fsrep mount``."""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fsrep._cli import _parser
from tools.move import _parser as move_parser
from tools.resync import _parser as resync_parser

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
PROGRAMS = {"fsrep": _parser, "fsrep-resync": resync_parser, "fsrep-move": move_parser}
ENDS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "(", ")", "$("}  # what ends a command on a line
FOR_MOUNT = {"_netdev", "nofail", "defaults", "noauto"}  # mount(8)'s own, in the guide's lines


@dataclass(frozen=True, slots=True)
class Command:
    program: str
    words: tuple[str, ...]  # what follows the program, to the end of the command
    where: str  # the text it was found in

    def flags(self) -> list[str]:
        flags = []
        for word in self.words:
            word = word.strip("[]")
            if word.startswith("--"):
                flags.append(word.split("=", 1)[0])
        return flags


def _code(text: str) -> Iterator[str]:
    """The guide's code: each line of a code block (indented or fenced),
    continuation lines joined, and each code span of the prose."""
    fenced = False
    prose: list[str] = []
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith(("    ", "\t")):
            block.append(line)
            continue
        yield from _joined(block)
        block = []
        if line.strip():
            prose.append(line)
            continue
        yield from re.findall(r"`([^`]+)`", " ".join(prose))
        prose = []


def _joined(lines: list[str]) -> Iterator[str]:
    held = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            held += line.rstrip()[:-1] + " "
            continue
        yield held + line
        held = ""
    if held:
        yield held


def _words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote in prose: plain words will do
        return line.split()


def commands(text: str) -> Iterator[Command]:
    """Each command of PROGRAMS in *text*'s code, where it is the command
    (first on its line or after ``|``, ``&&``, ...), not an argument."""
    for line in _code(text):
        words = _words(line)
        for i, word in enumerate(words):
            if Path(word).name not in PROGRAMS or (i and words[i - 1] not in ENDS):
                continue
            rest = []
            for following in words[i + 1:]:
                if following in ENDS:
                    break
                rest.append(following)
            yield Command(Path(word).name, tuple(rest), line)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def problems(command: Command) -> Iterator[tuple[tuple[str, str, str], str]]:
    """What *command* names that its parser lacks: ``((program,
    subcommand, flag), why)``, with flag ``""`` for a subcommand."""
    parser = PROGRAMS[command.program]()
    subcommand = ""
    subs = _subparsers(parser)
    if subs:
        if not command.words:
            return  # the program named in prose
        subcommand = command.words[0]
        if subcommand not in subs:
            yield (command.program, subcommand, ""), f"no subcommand {subcommand!r}"
            return
        parser = subs[subcommand]
        known = _options(parser)
        for name, action_parser in _subparsers(parser).items():  # fsrep snapshot MOUNTPOINT create ...
            if name in command.words[1:]:
                known |= _options(action_parser)
                break
    else:
        known = _options(parser)
    for flag in command.flags():
        if flag not in known:
            yield (command.program, subcommand, flag), f"{flag} is not an option of {command.program} {subcommand}"


def mount_options(text: str) -> Iterator[tuple[str, str]]:
    """Each option of a fuse.fsrep mount line in *text*'s code, with the line."""
    for line in _code(text):
        if "fuse.fsrep" not in line and not line.strip().startswith("Options="):
            continue
        lists = re.findall(r"(?:-o\s+|^\s*Options=)(\S+)", line)
        fstab = re.match(r"\s*/\S*\s+/\S*\s+fuse\.fsrep\s+(\S+)", line)  # STORE MOUNTPOINT TYPE OPTIONS
        if fstab:
            lists.append(fstab.group(1))
        for options in lists:
            for option in options.split(","):
                yield option.split("=", 1)[0], line


def test_the_guide_names_commands() -> None:
    found = list(commands(GUIDE.read_text()))
    programs = {c.program for c in found}
    assert programs == set(PROGRAMS)
    named = {c.words[0] for c in found if c.program == "fsrep" and c.words}
    assert {"keygen", "serve", "mount", "umount", "status", "promote", "demote", "snapshot", "clone"} <= named
    assert len(list(mount_options(GUIDE.read_text()))) > 5


def test_the_reader_finds_commands_flags_and_mount_options() -> None:
    text = ("Run `fsrep-resync /mnt --mode checksum` or:\n\n"
            "    ln -s /opt/fsrep/bin/fsrep /usr/local/bin/   # not a command here\n"
            "    fsrep mount /a /b --key-file k \\\n"
            "        --policy=sync | tee log && /opt/fsrep/bin/fsrep snapshot /b create [--name x]\n"
            "    /a /b fuse.fsrep secondary=h:1,key_file=k,_netdev 0 0\n")
    found = list(commands(text))
    assert [(c.program, c.flags()) for c in found] == [
        ("fsrep-resync", ["--mode"]), ("fsrep", ["--key-file", "--policy"]), ("fsrep", ["--name"])]
    assert [name for name, _ in mount_options(text)] == ["secondary", "key_file", "_netdev"]
    assert [why for c in found for _, why in problems(c)] == []
    bad = Command("fsrep", ("mount", "/a", "/b", "--no-such-flag"), "")
    assert [why for _, why in problems(bad)] == ["--no-such-flag is not an option of fsrep mount"]
    assert [key for key, _ in problems(Command("fsrep", ("frobnicate",), ""))] == [("fsrep", "frobnicate", "")]


def test_every_command_and_flag_in_the_guide_exists() -> None:
    wrong = [f"{why}, in: {c.where.strip()}" for c in commands(GUIDE.read_text()) for _, why in problems(c)]
    assert wrong == []


def test_every_mount_option_in_the_guide_is_an_option_of_fsrep_mount() -> None:
    mount = _subparsers(_parser())["mount"]
    flags = _options(mount)
    wrong = [f"{name}, in: {line.strip()}" for name, line in mount_options(GUIDE.read_text())
             if name not in FOR_MOUNT and "--" + name.replace("_", "-") not in flags]
    assert wrong == []
