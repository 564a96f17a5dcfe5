"""``fsrep completion bash``: the script, sourced in a real bash, completes
what the parsers define — subcommands, options, choices, file names — for
fsrep, fsrep-resync and fsrep-move."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fsrep._cli import _parser
from fsrep._completion import bash_script, function_name
from tools.move import _parser as move_parser
from tools.resync import _parser as resync_parser

PROGRAMS = {"fsrep": _parser, "fsrep-resync": resync_parser, "fsrep-move": move_parser}


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The script as the command prints it."""
    done = subprocess.run([sys.executable, "-m", "fsrep", "completion", "bash"], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stderr == ""
    path = tmp_path_factory.mktemp("completion") / "fsrep.bash"
    path.write_text(done.stdout)
    return path


def complete(script: Path, *words: str, cwd: Path | None = None) -> list[str]:
    """What bash offers for the last of *words* (the program first)."""
    program = words[0]
    code = (f'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); {function_name(program)}; '
            f'printf "%s\\n" "${{COMPREPLY[@]}}"')
    done = subprocess.run(["bash", "-c", code, "bash", str(script), *words], capture_output=True, text=True,
                          timeout=30, check=True, cwd=cwd)
    assert done.stderr == ""
    return [line for line in done.stdout.splitlines() if line]


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    """The parser's subcommands, read from argparse itself."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(action.choices)


def test_a_subcommand_completes_from_its_prefix(script: Path) -> None:
    names = _subcommands(_parser())
    assert "mount" in complete(script, "fsrep", "mo")
    for prefix in ("mo", "s", "d", "c"):
        assert complete(script, "fsrep", prefix) == [n for n in names if n.startswith(prefix)]
    assert complete(script, "fsrep", "comp") == ["completion"]


def test_every_subcommand_of_the_parser_is_offered(script: Path) -> None:
    """The script is made from the parser: a subcommand added to it is
    offered without a change here or in the script's maker."""
    names = _subcommands(_parser())
    assert {"mount", "serve", "status", "completion"} <= set(names)
    assert complete(script, "fsrep", "") == names
    text = script.read_text()
    for name in names:
        assert f"        {name}) opts=" in text, f"{name} has no completion table"
    (action,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert complete(script, "fsrep", "snapshot", "/mnt/data", "") == _subcommands(action.choices["snapshot"])


def _tree(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Each parser under *parser* with the subcommands that lead to it, read from argparse itself."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _tree(child, (*path, name))


def _words_to(program: str, path: tuple[str, ...]) -> list[str]:
    """The words that reach the subcommand *path*: a stand-in for each
    positional that goes before a subcommand (fsrep snapshot MOUNTPOINT create)."""
    found = dict(_tree(PROGRAMS[program]()))
    words = [program]
    for depth, name in enumerate(path):
        positionals = [a for a in found[path[:depth]]._actions if not a.option_strings]
        words += ["x"] * next(i for i, a in enumerate(positionals) if isinstance(a, argparse._SubParsersAction))
        words.append(name)
    return words


@pytest.mark.parametrize("program", list(PROGRAMS))
def test_every_option_of_every_subcommand_is_offered(script: Path, program: str) -> None:
    for path, parser in _tree(PROGRAMS[program]()):
        words = _words_to(program, path)
        assert set(complete(script, *words, "-")) == _options(parser), words


def test_mount_options_complete_from_a_prefix(script: Path) -> None:
    assert complete(script, "fsrep", "mount", "--pol") == ["--policy"]
    assert complete(script, "fsrep", "mount", "/srv/data", "/mnt/data", "--key-file", "/k", "--writeb") == \
        ["--writeback-cache"]


def test_a_choice_option_offers_its_choices(script: Path) -> None:
    policies = ["sync", "strict", "semi-sync", "async"]
    assert complete(script, "fsrep", "mount", "--policy", "") == policies
    assert complete(script, "fsrep", "mount", "--policy", "s") == ["sync", "strict", "semi-sync"]
    assert complete(script, "fsrep", "mount", "--policy=semi") == ["--policy=semi-sync"]
    assert complete(script, "fsrep", "mount", "--policy", "=", "st") == ["strict"]  # '=' split off by bash
    assert complete(script, "fsrep", "completion", "") == ["bash"]


def test_a_path_option_completes_file_names(script: Path, tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "key.pem").write_text("")
    (tmp_path / "other").write_text("")
    assert sorted(complete(script, "fsrep", "mount", "--key-file", "k", cwd=tmp_path)) == ["key.pem", "keys"]
    assert complete(script, "fsrep", "mount", "", cwd=tmp_path) == ["keys"]  # STORE: directories only
    assert complete(script, "fsrep-move", "/mnt/data", "--to", "", cwd=tmp_path) == ["keys"]


def test_a_value_taking_option_is_skipped_when_counting_positionals(script: Path, tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    assert complete(script, "fsrep", "mount", "--key-file", "/k", "--policy", "sync", "m", cwd=tmp_path) == ["mnt"]
    mount = dict(_tree(_parser()))[("mount",)]
    assert set(complete(script, "fsrep", "mount", "/srv", "/mnt", "")) == _options(mount)  # no positional left


def test_a_nested_subcommand_completes_after_its_positional(script: Path) -> None:
    assert complete(script, "fsrep", "snapshot", "/mnt/data", "") == ["create", "list", "delete"]
    assert complete(script, "fsrep", "snapshot", "/mnt/data", "create", "--n") == ["--name"]


def test_fsrep_resync_completes_its_options_and_choices(script: Path) -> None:
    assert complete(script, "fsrep-resync", "--mo") == ["--mode"]
    assert complete(script, "fsrep-resync", "/mnt/data", "--mode", "") == ["quick", "snapshot", "checksum", "full"]
    assert complete(script, "fsrep-resync", "/mnt/data", "--discard", "") == ["primary", "secondary"]
    assert complete(script, "fsrep-resync", "/mnt/data", "--from", "") == ["secondary"]
    assert set(complete(script, "fsrep-resync", "/mnt/data", "--")) == \
        {o for o in _options(resync_parser()) if o.startswith("--")}


def test_fsrep_move_completes_its_options(script: Path) -> None:
    assert complete(script, "fsrep-move", "/mnt/data", "--ab") == ["--abort"]
    assert complete(script, "fsrep-move", "/mnt/data", "--t") == ["--to", "--to-primary"]
    assert set(complete(script, "fsrep-move", "/mnt/data", "--")) == \
        {o for o in _options(move_parser()) if o.startswith("--")}


def test_the_script_registers_each_program(script: Path) -> None:
    text = script.read_text()
    for program in PROGRAMS:
        assert f"complete -F {function_name(program)} {program}\n" in text
    done = subprocess.run(["bash", "-c", 'source "$1"; complete -p fsrep fsrep-resync fsrep-move', "bash",
                           str(script)], capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.splitlines() == [f"complete -F {function_name(p)} {p}" for p in PROGRAMS]


def test_a_subcommand_added_to_the_parser_is_completed_with_no_other_change(tmp_path: Path) -> None:
    parser = _parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    p = sub.add_parser("frobnicate")
    p.add_argument("--level", choices=("low", "high"))
    p.add_argument("--into", metavar="DIR")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    (tmp_path / "here").mkdir()
    script = tmp_path / "fsrep.bash"
    script.write_text(bash_script({"fsrep": parser}))
    assert complete(script, "fsrep", "frob") == ["frobnicate"]
    assert complete(script, "fsrep", "frobnicate", "--l") == ["--level"]
    assert complete(script, "fsrep", "frobnicate", "--level", "") == ["low", "high"]
    assert complete(script, "fsrep", "frobnicate", "--into", "", cwd=tmp_path) == ["here"]
