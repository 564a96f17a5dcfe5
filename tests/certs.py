"""Certificates for the TLS tests and the TLS benchmark, made with the
``openssl`` command (Debian's openssl package; ``make deps`` installs it):
a CA, and the certificates it signs for 127.0.0.1 — good ones, expired
ones, ones for another address. The commands are those README.md shows."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL_TIMEOUT = 60.0
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


@dataclass(frozen=True)
class CA:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Identity:
    """What a daemon is started with: its certificate and key, and the CA
    it accepts the peers of."""

    cert: Path
    key: Path
    ca: Path

    def args(self) -> list[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key), "--tls-ca", str(self.ca)]


def _openssl(*args: str, stdin: bytes | None = None) -> bytes:
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is missing: install the openssl package (make deps does)")
    done = subprocess.run(["openssl", *args], input=stdin, capture_output=True, timeout=OPENSSL_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def make_ca(directory: Path, name: str) -> CA:
    """A new CA, ``NAME.pem`` and ``NAME.key`` in *directory*."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = CA(directory / f"{name}.pem", directory / f"{name}.key")
    _openssl("req", "-x509", *_KEY, "-keyout", str(ca.key), "-out", str(ca.cert), "-days", "3650",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return ca


def issue(ca: CA, name: str, *, address: str = "127.0.0.1", days: int = 30, trust: CA | None = None) -> Identity:
    """A certificate signed by *ca* for the IP *address*, valid for *days*
    (negative: it expired before it was made), with its key, next to the
    CA's files; the identity accepts the peers of *trust* (default: *ca*)."""
    directory = ca.cert.parent
    cert, key, ext = directory / f"{name}.pem", directory / f"{name}.key", directory / f"{name}.ext"
    ext.write_text(f"subjectAltName=IP:{address}\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
                   "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    request = _openssl("req", "-new", *_KEY, "-keyout", str(key), "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial", "-days", str(days),
             "-extfile", str(ext), "-out", str(cert), stdin=request)
    return Identity(cert, key, (trust or ca).cert)
