"""Declared consistency groups and TLS files: what a config file and the
flags give, without mounting."""

from __future__ import annotations

from pathlib import Path

import pytest

import transport as tp
from fsrep._config import ConfigError, GroupSpec, declared_groups, declared_tls


def test_groups_take_the_mounts_settings_unless_they_name_their_own(tmp_path: Path) -> None:
    config = tmp_path / "fsrep.toml"
    config.write_text('secondary = "file:1"\npolicy = "semi-sync"\n'
                      '[[group]]\npath = "/vms/vm1/"\n'
                      '[[group]]\npath = "vm2"\npolicy = "strict"\nsecondary = "other:2"\n')
    specs = declared_groups(str(config), ["vm3"], None, None)
    assert specs == [GroupSpec("", "semi-sync", "file:1"), GroupSpec("vms/vm1", "semi-sync", "file:1"),
                     GroupSpec("vm2", "strict", "other:2"), GroupSpec("vm3", "semi-sync", "file:1")]


def test_command_line_flags_win_over_the_files_top_level(tmp_path: Path) -> None:
    config = tmp_path / "fsrep.toml"
    config.write_text('secondary = "file:1"\npolicy = "async"\n[[group]]\npath = "a"\n')
    specs = declared_groups(str(config), [], "sync", "flag:7")
    assert specs == [GroupSpec("", "sync", "flag:7"), GroupSpec("a", "sync", "flag:7")]


def test_without_declarations_the_mount_is_one_group() -> None:
    assert declared_groups(None, [], None, "h:1") == [GroupSpec("", "sync", "h:1")]


@pytest.mark.parametrize("path", ["", "/", ".", "a/../b", "a//b", ".fsrep", ".fsrep/x", "a/./b"])
def test_a_group_path_must_name_a_subdirectory(path: str) -> None:
    with pytest.raises(ConfigError, match="subdirectory of the mount"):
        declared_groups(None, [path], None, "h:1")


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file .*missing.toml"):
        declared_groups(str(tmp_path / "missing.toml"), [], None, "h:1")


def test_a_bad_secondary_in_a_group_is_named(tmp_path: Path) -> None:
    config = tmp_path / "fsrep.toml"
    config.write_text('[[group]]\npath = "a"\nsecondary = "nohostport"\n')
    with pytest.raises(ConfigError, match="secondary of group 'a'"):
        declared_groups(str(config), [], None, "h:1")


def test_the_tls_table_of_the_config_file_names_files_next_to_it(tmp_path: Path) -> None:
    config = tmp_path / "fsrep.toml"
    config.write_text('secondary = "h:1"\n[tls]\ncert = "p.pem"\nkey = "/abs/p.key"\nca = "ca.pem"\n')
    assert declared_groups(str(config), [], None, None) == [GroupSpec("", "sync", "h:1")]
    assert declared_tls(str(config), None, None, None) == tp.TLSFiles(str(tmp_path / "p.pem"), "/abs/p.key",
                                                                    str(tmp_path / "ca.pem"))


def test_tls_flags_win_over_the_config_files_table(tmp_path: Path) -> None:
    config = tmp_path / "fsrep.toml"
    config.write_text('[tls]\ncert = "p.pem"\nkey = "p.key"\nca = "ca.pem"\n')
    assert declared_tls(str(config), "c", "k", "a") == tp.TLSFiles("c", "k", "a")


def test_no_tls_anywhere_is_none(tmp_path: Path) -> None:
    config = tmp_path / "fsrep.toml"
    config.write_text('secondary = "h:1"\n')
    assert declared_tls(str(config), None, None, None) is None
    assert declared_tls(None, None, None, None) is None


@pytest.mark.parametrize(("flags", "missing"), [
    (("c", None, None), "--tls-key and --tls-ca missing"),
    ((None, "k", None), "--tls-cert and --tls-ca missing"),
    (("c", "k", None), "--tls-ca missing"),
])
def test_tls_flags_go_together(flags: tuple[str | None, str | None, str | None], missing: str) -> None:
    with pytest.raises(ConfigError, match=f"^{missing}: mutual TLS needs --tls-cert, --tls-key and --tls-ca"):
        declared_tls(None, *flags)


@pytest.mark.parametrize(("table", "message"), [
    ('[tls]\ncert = "p.pem"\nca = "ca.pem"\n', r"\[tls\]: key missing; mutual TLS needs cert, key and ca"),
    ('[tls]\ncert = "p.pem"\nkey = "p.key"\nca = "ca.pem"\nverify = false\n',
     r"\[tls\]: unknown setting 'verify' \(known: cert, key, ca\)"),
    ('tls = "yes"\n', r"\[tls\] must be a table with cert, key, ca"),
    ('[tls]\ncert = 1\nkey = "p.key"\nca = "ca.pem"\n', r"\[tls\]: cert must be a string"),
])
def test_a_bad_tls_table_is_named(tmp_path: Path, table: str, message: str) -> None:
    config = tmp_path / "fsrep.toml"
    config.write_text(table)
    with pytest.raises(ConfigError, match=message):
        declared_tls(str(config), None, None, None)


def test_a_config_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    config = tmp_path / "fsrep.toml"
    config.write_bytes(b'# r\xe9plica\nsecondary = "h:1"\n')
    with pytest.raises(ConfigError, match=r"config file .*fsrep.toml is not UTF-8 text \(byte 0xe9 at offset 3\)"):
        declared_groups(str(config), [], None, None)


def test_a_bad_secondary_is_named_where_it_was_given(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^--secondary must be HOST:PORT .*not '127.0.0.1'$"):
        declared_groups(None, ["a"], None, "127.0.0.1")
    config = tmp_path / "fsrep.toml"
    config.write_text('secondary = "127.0.0.1"\n')
    with pytest.raises(ConfigError, match=r"^config file .*fsrep.toml: secondary must be HOST:PORT"):
        declared_groups(str(config), [], None, None)


@pytest.mark.parametrize("flag", ["--group", "--secondary"])
def test_text_that_is_not_utf8_is_refused(flag: str) -> None:
    text = "vm" + "\udce9"  # the byte 0xe9 of argv, surrogate-escaped
    groups, secondary = ([text], "h:1") if flag == "--group" else ([], text + ":1")
    with pytest.raises(ConfigError, match=rf"^{flag}: b'vm\\xe9.*' is not UTF-8 text"):
        declared_groups(None, groups, None, secondary)
