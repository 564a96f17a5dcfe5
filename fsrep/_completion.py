"""``fsrep completion bash``: a bash completion script for ``fsrep``,
``fsrep-resync`` and ``fsrep-move``, generated from their argparse parsers
each time it is printed, so it names exactly the subcommands, options and
choices the installed commands have.

How this works: ``nodes()`` walks a parser — each subcommand (and each
subcommand of a subcommand, like ``snapshot create``) is a ``Node`` with
its options, the options that take a value, its positionals, and how each
value completes: an option's ``choices``, file names for a metavar that
names a file (``FILE``, ``KEYFILE``, ...), directory names for one that
names a directory (``STORE``, ``MOUNTPOINT``, ...), nothing otherwise.
``bash_script()`` writes each program's nodes as two bash functions (its
tables) and one shared function walks the words typed so far through them.

Caveats:
- An option abbreviated on the command line (``--pol sync``) is not
  recognised while walking the words; its value counts as a positional.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator
from dataclasses import dataclass

SHELLS = ("bash",)
# Which metavars name a path on this host, and of what kind.
DIRECTORY_METAVARS = frozenset({"STORE", "STORE2", "MOUNTPOINT", "DIR", "REPLICA", "SECONDARY_STORE"})
FILE_METAVARS = frozenset({"FILE", "KEYFILE", "KEY", "SRC", "DST", "PATH"})
SUBCOMMAND = "@"  # the positional key of a node's subcommand


def add_parser(sub: argparse._SubParsersAction, fmt: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser("completion", help="print a shell completion script for fsrep, fsrep-resync and fsrep-move",
                       formatter_class=fmt,
                       epilog="example:\n  fsrep completion bash > /etc/bash_completion.d/fsrep\n"
                              "  source <(fsrep completion bash)      # this shell only\n\n"
                              "the script is made from the commands' own options each time, so it matches the\n"
                              "installed version: print it again after an upgrade.")
    p.add_argument("shell", choices=SHELLS, metavar="SHELL", help="the shell: bash")


def cmd_completion(args: argparse.Namespace) -> int:
    print(bash_script(programs()), end="")
    return 0


def programs() -> dict[str, argparse.ArgumentParser]:
    """Each command's parser, by the command's name."""
    from tools import move, resync

    from ._cli import _parser
    return {"fsrep": _parser(), "fsrep-resync": resync._parser(), "fsrep-move": move._parser()}


@dataclass(frozen=True, slots=True)
class Completion:
    """How one value completes: ``words`` from a list, ``files``, ``dirs``."""

    kind: str
    words: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("words", "files", "dirs"):
            raise ValueError(f"unknown completion {self.kind!r}")


@dataclass(frozen=True, slots=True)
class Node:
    """A parser or subparser: *path* is the subcommands that lead to it
    (``()`` for the program itself). *positionals* are keys of *values*
    (``#0``, ``#1``; ``#N*`` when the last repeats) or ``@`` where a
    subcommand goes."""

    path: tuple[str, ...]
    options: tuple[str, ...]  # offered: not those hidden from --help
    takes_value: tuple[str, ...]  # every option string that consumes the next word
    positionals: tuple[str, ...]
    subcommands: tuple[str, ...]
    values: dict[str, Completion]


def nodes(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[Node]:
    """*parser* and every subparser under it, parents first."""
    options: list[str] = []
    takes_value: list[str] = []
    positionals: list[str] = []
    subcommands: list[str] = []
    values: dict[str, Completion] = {}
    children: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            positionals.append(SUBCOMMAND)
            for name, child in action.choices.items():
                subcommands.append(name)
                children.append((name, child))
            continue
        how = _completion(action)
        if action.option_strings:
            if action.help != argparse.SUPPRESS:
                options.extend(action.option_strings)
            if action.nargs != 0:
                takes_value.extend(action.option_strings)
                for option in action.option_strings:
                    if how is not None:
                        values[option] = how
            continue
        key = f"#{len(positionals)}" + ("*" if action.nargs in ("*", "+", argparse.REMAINDER) else "")
        positionals.append(key)
        if how is not None:
            values[key] = how
    yield Node(path, tuple(options), tuple(takes_value), tuple(positionals), tuple(subcommands), values)
    for name, child in children:
        yield from nodes(child, (*path, name))


def _completion(action: argparse.Action) -> Completion | None:
    if action.choices is not None:
        return Completion("words", tuple(str(choice) for choice in action.choices))
    metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    if metavar in DIRECTORY_METAVARS:
        return Completion("dirs")
    if metavar in FILE_METAVARS:
        return Completion("files")
    return None


def function_name(program: str) -> str:
    """The bash function that completes *program* (``fsrep-resync``: ``_fsrep_resync``)."""
    return "_" + program.replace("-", "_")


_ENGINE = r"""# bash completion for fsrep, fsrep-resync and fsrep-move, made by 'fsrep completion bash'
# from the commands' own options: print it again after an upgrade.

__fsrep_words() { mapfile -t COMPREPLY < <(compgen -W "$1" -- "$cur"); }
__fsrep_files() { compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -f -- "$cur"); }
__fsrep_dirs() { compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -d -- "$cur"); }

# __fsrep_complete TABLES: completes COMP_WORDS[COMP_CWORD] with the tables
# __fsrep_node_TABLES NODE (sets opts, valopts, subs, pos) and
# __fsrep_value_TABLES NODE KEY (completes an option's or a positional's value).
__fsrep_complete() {
    local tables=$1 cur=${COMP_WORDS[COMP_CWORD]} node="" opts="" valopts="" subs="" pos=""
    local -i npos=0 skip=0 i
    local w lastopt="" opt="" prefix="" key
    local -a keys
    COMPREPLY=()
    "__fsrep_node_$tables" ""
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if ((skip)); then
            [[ $w == "=" ]] || skip=0  # --opt = value, split where bash breaks words
            continue
        fi
        case $w in
            --) continue ;;
            -*=*) continue ;;
            -*)
                if [[ " $valopts " == *" $w "* ]]; then skip=1; lastopt=$w; fi
                continue ;;
        esac
        read -ra keys <<<"$pos"
        key=${keys[npos]:-}
        if [[ $key == "@" ]]; then
            if [[ " $subs " == *" $w "* ]]; then
                node=${node:+$node }$w
                npos=0
                "__fsrep_node_$tables" "$node"
                continue
            fi
        fi
        [[ $key == *"*" ]] || npos+=1
    done
    if ((skip)); then
        opt=$lastopt
        [[ $cur == "=" ]] && cur=""
    elif [[ $cur == -*=* ]]; then
        opt=${cur%%=*} prefix=${cur%%=*}= cur=${cur#*=}
    fi
    if [[ -n $opt ]]; then
        "__fsrep_value_$tables" "$node" "$opt"
        [[ -n $prefix ]] && COMPREPLY=("${COMPREPLY[@]/#/$prefix}")
        return 0
    fi
    if [[ $cur == -* ]]; then
        __fsrep_words "$opts"
        return 0
    fi
    read -ra keys <<<"$pos"
    key=${keys[npos]:-}
    if [[ -z $key ]]; then
        __fsrep_words "$opts"
    elif [[ $key == "@" ]]; then
        __fsrep_words "$subs"
    else
        "__fsrep_value_$tables" "$node" "$key"
    fi
    return 0
}
"""


def bash_script(parsers: dict[str, argparse.ArgumentParser]) -> str:
    """The completion script for *parsers* (program name -> parser)."""
    parts = [_ENGINE]
    for program, parser in parsers.items():
        parts.append(_tables(function_name(program).lstrip("_"), list(nodes(parser))))
        parts.append(f"{function_name(program)}() {{ __fsrep_complete {function_name(program).lstrip('_')}; }}\n"
                     f"complete -F {function_name(program)} {program}\n")
    return "\n".join(parts)


def _tables(tables: str, found: list[Node]) -> str:
    lines = [f"__fsrep_node_{tables}() {{", '    case "$1" in']
    for node in found:
        assign = (f"opts={_quoted(node.options)} valopts={_quoted(node.takes_value)} "
                  f"subs={_quoted(node.subcommands)} pos={_quoted(node.positionals)}")
        lines.append(f"        {shlex.quote(' '.join(node.path))}) {assign} ;;")
    lines += ["    esac", "}", f"__fsrep_value_{tables}() {{", '    case "$1|$2" in']
    for node in found:
        for key, how in node.values.items():
            label = shlex.quote(f"{' '.join(node.path)}|{key}")
            if how.kind == "words":
                lines.append(f"        {label}) __fsrep_words {_quoted(how.words)} ;;")
            else:
                lines.append(f"        {label}) __fsrep_{how.kind} ;;")
    lines += ["    esac", "}", ""]
    return "\n".join(lines)


def _quoted(words: tuple[str, ...]) -> str:
    if any(not word or any(c.isspace() for c in word) for word in words):
        raise ValueError(f"a word to complete is empty or holds a space: {words!r}")
    return shlex.quote(" ".join(words))
