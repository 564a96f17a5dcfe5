"""Mutual TLS between real daemons, with a CA and certificates made by
openssl for the test: a good pair replicates; a peer with a certificate
from another CA, an expired one, none, or one for another address is
refused before anything is applied, the refusing side's log says why, and
the primary's status says why it cannot connect; a plain peer and a TLS
peer refuse each other at once, never hang. Bad TLS options stop ``fsrep
serve`` and ``fsrep mount`` with one line."""

from __future__ import annotations

import contextlib
import os
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

import transport as tp
from fsrep._config import read_key
from fsrep._secondary import HANDSHAKE_TIMEOUT
from tests.certs import CA, Identity, issue, make_ca
from tests.conftest import REFUSED_PEER, Cluster, run_fsrep, wait_for, write_random

CERTIFICATE_REJECTED = REFUSED_PEER + r"TLS handshake failed: the peer's certificate was rejected: "
NO_CERTIFICATE = REFUSED_PEER + r"TLS handshake failed: the peer sent no certificate\)?$"
OURS_REJECTED = (REFUSED_PEER + r"TLS handshake failed: the peer closed the connection \(it may have refused this "
                 r"host's certificate; its log says why\)\)?$")
PLAIN_PEER = (REFUSED_PEER + r"TLS handshake failed: the peer does not speak TLS \(both sides need --tls-cert, "
              r"--tls-key and --tls-ca\)\)?$")
TLS_PEER = (REFUSED_PEER + r"protocol error from \S+: the peer began a TLS handshake, and this side runs without "
            r"TLS\)?$")


@dataclass(frozen=True)
class Pki:
    ca: CA
    secondary: Identity
    primary: Identity
    expired: Identity  # signed by the CA, expired
    stranger: Identity  # signed by another CA (and trusting ours)
    impostor: Identity  # a secondary's certificate signed by another CA
    elsewhere: Identity  # a secondary's certificate for 127.0.0.2, not 127.0.0.1


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca, other = make_ca(base / "ca", "ca"), make_ca(base / "other", "other")
    return Pki(ca=ca, secondary=issue(ca, "secondary"), primary=issue(ca, "primary"),
               expired=issue(ca, "expired", days=-1), stranger=issue(other, "stranger", trust=ca),
               impostor=issue(other, "impostor", trust=ca), elsewhere=issue(ca, "elsewhere", address="127.0.0.2"))


@pytest.fixture(scope="module")
def key_file(pki: Pki) -> Path:
    key = pki.ca.cert.parent / "fsrep.key"
    run_fsrep("keygen", str(key))
    return key


@contextlib.contextmanager
def _cluster(base: Path, secondary_args: list[str]) -> Iterator[Cluster]:
    cluster = Cluster(base)
    cluster.secondary.args = tuple(secondary_args)
    cluster.secondary.start()
    try:
        yield cluster
    finally:
        cluster.cleanup()


def _serve_log(cluster: Cluster) -> str:
    return (cluster.secondary.store / ".fsrep" / "serve.log").read_text()


def _refusal(cluster: Cluster, reason: str) -> str:
    """The secondary's log line that refused a peer for *reason*."""
    def find() -> str | None:
        lines = [line for line in _serve_log(cluster).splitlines() if " refused " in line and reason in line]
        return lines[0] if lines else None
    return wait_for(find, f"the secondary to log a refusal for {reason!r}")


def _assert_nothing_applied(cluster: Cluster) -> None:
    """No replica was made and no session was opened on the secondary."""
    store = cluster.secondary.store
    assert [p.name for p in store.iterdir()] == [".fsrep"]
    assert not list((store / ".fsrep" / "replicas").iterdir())
    assert " authenticated" not in _serve_log(cluster)


def _mount_refused(cluster: Cluster, identity_args: list[str], reason: str) -> dict:
    """Mount (policy sync: the mount serves while the secondary refuses),
    write, and wait until the status says *reason*; the group's status.
    The reason is the refusal's own, not a handshake that timed out: a
    refusal comes at once, it never hangs."""
    cluster.mount(*identity_args)
    (cluster.mnt / "written-while-refused").write_bytes(b"must not reach the replica")
    status = wait_for(lambda: (s := cluster.status())["last_error"] and s, "a connection error in the status")
    assert reason in status["last_error"], status["last_error"]
    assert "within" not in status["last_error"]
    assert status["state"] == "OutOfSync"
    assert not status["connected"]
    return status


def test_a_good_pair_replicates_over_tls_13(tmp_path: Path, pki: Pki) -> None:
    config = pki.ca.cert.parent / "primary.toml"  # the [tls] table's paths are relative to the file
    config.write_text('[tls]\ncert = "primary.pem"\nkey = "primary.key"\nca = "ca.pem"\n')
    with _cluster(tmp_path, pki.secondary.args()) as cluster:
        cluster.mount("--config", str(config))
        assert cluster.status()["state"] == "InSync"
        (cluster.mnt / "dir" / "sub").mkdir(parents=True)
        write_random(cluster.mnt / "dir" / "big", 12)
        for i in range(50):
            (cluster.mnt / "dir" / "sub" / f"small{i}").write_bytes(b"x" * (i * 100))
        (cluster.mnt / "dir" / "big").rename(cluster.mnt / "big")
        with open(cluster.mnt / "synced", "wb") as f:
            f.write(b"y" * 4096)
            f.flush()
            os.fsync(f.fileno())
        assert cluster.status()["state"] == "InSync"
        assert " over TLSv1.3 and authenticated" in cluster.primary_log()
        assert " authenticated over TLSv1.3" in _serve_log(cluster)
        assert "(mutual TLS, then the pre-shared key)" in _serve_log(cluster)
        cluster.assert_replicated()


@pytest.mark.parametrize(("who", "reason"), [
    ("stranger", "the peer's certificate was rejected: unable to get local issuer certificate "
                 "(not signed by the CA of --tls-ca)"),
    ("expired", "the peer's certificate was rejected: certificate has expired"),
])
@pytest.mark.expect_log(CERTIFICATE_REJECTED)
def test_a_primary_certificate_the_secondary_rejects_is_refused_before_anything_is_applied(
        tmp_path: Path, pki: Pki, who: str, reason: str) -> None:
    with _cluster(tmp_path, pki.secondary.args()) as cluster:
        _mount_refused(cluster, getattr(pki, who).args(), "it most likely refused this primary's certificate")
        assert "TLS handshake failed: " + reason in _refusal(cluster, reason)
        _assert_nothing_applied(cluster)


@pytest.mark.expect_log(NO_CERTIFICATE)
async def test_a_primary_without_a_certificate_is_refused_before_anything_is_applied(tmp_path: Path,
                                                                                      pki: Pki) -> None:
    no_certificate = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_certificate.load_verify_locations(cafile=str(pki.ca.cert))
    with _cluster(tmp_path, pki.secondary.args()) as cluster:
        with trio.fail_after(HANDSHAKE_TIMEOUT), \
                pytest.raises(tp.LinkDown, match="it most likely refused this primary's certificate"):
            await tp.open_primary_connection("127.0.0.1", cluster.secondary.port, read_key(str(cluster.key)),
                                             uuid.uuid4().bytes, 5, tls=no_certificate)
        assert "TLS handshake failed: the peer sent no certificate" in _refusal(cluster, "no certificate")
        _assert_nothing_applied(cluster)


@pytest.mark.parametrize(("who", "reason"), [
    ("impostor", "TLS handshake with secondary 127.0.0.1:{port} failed: the peer's certificate was rejected: "
                 "unable to get local issuer certificate (not signed by the CA of --tls-ca)"),
    ("elsewhere", "TLS handshake with secondary 127.0.0.1:{port} failed: the peer's certificate was rejected: "
                  "IP address mismatch, certificate is not valid for '127.0.0.1'. (it must name the address "
                  "given in --secondary in its subjectAltName)"),
])
@pytest.mark.expect_log(OURS_REJECTED)
def test_a_secondary_certificate_the_primary_rejects_is_refused_before_anything_is_applied(
        tmp_path: Path, pki: Pki, who: str, reason: str) -> None:
    with _cluster(tmp_path, getattr(pki, who).args()) as cluster:
        expected = reason.format(port=cluster.secondary.port)
        _mount_refused(cluster, pki.primary.args(), expected)
        assert expected in cluster.primary_log()
        _refusal(cluster, "TLS handshake failed: the peer closed the connection")
        _assert_nothing_applied(cluster)


@pytest.mark.expect_log(PLAIN_PEER)
def test_a_plain_primary_is_refused_by_a_tls_secondary_at_once(tmp_path: Path, pki: Pki) -> None:
    with _cluster(tmp_path, pki.secondary.args()) as cluster:
        _mount_refused(cluster, [], "closed the connection before the handshake; its log says why (a secondary "
                                    "started with --tls-cert, --tls-key and --tls-ca does this to a primary "
                                    "without them)")
        _refusal(cluster, "TLS handshake failed: the peer does not speak TLS")
        _assert_nothing_applied(cluster)


@pytest.mark.expect_log(TLS_PEER)
def test_a_tls_primary_is_refused_by_a_plain_secondary_at_once(tmp_path: Path, pki: Pki) -> None:
    with _cluster(tmp_path, []) as cluster:
        _mount_refused(cluster, pki.primary.args(), "failed: the peer does not speak TLS (both sides need "
                                                    "--tls-cert, --tls-key and --tls-ca)")
        _refusal(cluster, "the peer began a TLS handshake, and this side runs without TLS")
        _assert_nothing_applied(cluster)


# --- bad options ------------------------------------------------------------------------


def _bad_options(pki: Pki, base: Path) -> dict[str, tuple[list[str], str]]:
    """id: (TLS options, what the one line says)."""
    missing = base / "missing.pem"
    garbage = base / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    good = pki.primary
    return {
        "missing-cert": (["--tls-cert", str(missing), "--tls-key", str(good.key), "--tls-ca", str(good.ca)],
                         f"cannot read TLS certificate {missing}: No such file or directory"),
        "missing-ca": (["--tls-cert", str(good.cert), "--tls-key", str(good.key), "--tls-ca", str(missing)],
                       f"cannot read TLS CA certificate {missing}: No such file or directory"),
        "garbage-cert": (["--tls-cert", str(garbage), "--tls-key", str(good.key), "--tls-ca", str(good.ca)],
                         f"TLS certificate {garbage} holds no usable PEM certificate"),
        "garbage-key": (["--tls-cert", str(good.cert), "--tls-key", str(garbage), "--tls-ca", str(good.ca)],
                        f"TLS private key {garbage} is not an unencrypted PEM private key"),
        "key-of-another": (["--tls-cert", str(good.cert), "--tls-key", str(pki.secondary.key),
                            "--tls-ca", str(good.ca)],
                           f"TLS private key {pki.secondary.key} does not belong to the certificate {good.cert}"),
        "cert-alone": (["--tls-cert", str(good.cert)], "--tls-key and --tls-ca missing: mutual TLS needs "
                                                       "--tls-cert, --tls-key and --tls-ca together"),
        "no-key": (["--tls-cert", str(good.cert), "--tls-ca", str(good.ca)], "--tls-key missing"),
    }


@pytest.mark.parametrize("case", ["missing-cert", "missing-ca", "garbage-cert", "garbage-key", "key-of-another",
                                  "cert-alone", "no-key"])
@pytest.mark.parametrize("command", ["serve", "mount"])
def test_bad_tls_options_stop_the_daemon_with_one_line(tmp_path: Path, pki: Pki, key_file: Path, command: str,
                                                       case: str) -> None:
    options, message = _bad_options(pki, tmp_path)[case]
    for d in ("store", "mnt"):
        (tmp_path / d).mkdir()
    if command == "serve":
        argv = ["serve", str(tmp_path / "store"), "--listen", "127.0.0.1:0"]
    else:
        argv = ["mount", str(tmp_path / "store"), str(tmp_path / "mnt"), "--secondary", "127.0.0.1:1"]
    done = run_fsrep(*argv, "--key-file", str(key_file), *options, check=False, timeout=30)
    assert done.returncode == 1
    assert done.stderr.startswith(f"fsrep {command}: error: ")
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert message in done.stderr
    assert not (tmp_path / "store" / ".fsrep").exists()  # stopped before the daemon touched the store


def test_a_tls_table_naming_a_missing_file_stops_the_mount_with_one_line(tmp_path: Path, pki: Pki,
                                                                          key_file: Path) -> None:
    config = pki.ca.cert.parent / "nowhere.toml"
    config.write_text('[tls]\ncert = "nowhere.pem"\nkey = "primary.key"\nca = "ca.pem"\n')
    for d in ("store", "mnt"):
        (tmp_path / d).mkdir()
    done = run_fsrep("mount", str(tmp_path / "store"), str(tmp_path / "mnt"), "--secondary", "127.0.0.1:1",
                     "--key-file", str(key_file), "--config", str(config), check=False, timeout=30)
    assert done.returncode == 1
    assert done.stderr == (f"fsrep mount: error: cannot read TLS certificate {config.parent / 'nowhere.pem'}: "
                           f"No such file or directory\n")
