"""Mutual TLS under the session: the two SSL contexts, and one line saying
why a TLS handshake failed.

TLS encrypts the link and proves each host's certificate comes from the
operator's CA; the pre-shared key's challenge-response still runs inside it
and still decides which groups a peer may serve. Both sides demand a
certificate (``CERT_REQUIRED``), accept only those signed by the CA given,
and speak TLS 1.2 or newer (1.3 when both can). The primary also checks
that the secondary's certificate names the host it dials (its DNS name or
IP address in the subjectAltName), as any TLS client does.

Caveats:
- Under TLS 1.3 the client finishes its handshake before the server has
  looked at the client's certificate; a refusal of that certificate reaches
  the primary as the connection closing at its first read, never as a
  reason (trio's SSLStream sends no alert). The secondary's log has it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from ._errors import TLSFileError

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
CLOSED = "the peer closed the connection"

# OpenSSL's reasons, as an operator reads them ("the peer" is the other host).
_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the peer sent no certificate",
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS (both sides need --tls-cert, --tls-key and --tls-ca)",
    "UNEXPECTED_EOF_WHILE_READING": CLOSED,
    "UNSUPPORTED_PROTOCOL": f"the peer offers no TLS version this side accepts ({MINIMUM_VERSION.name} or newer)",
    "NO_SHARED_CIPHER": "the peer offers no cipher this side accepts",
}
# X509 verification results that deserve a hint on top of OpenSSL's words.
_VERIFY_HINTS = {
    2: "not signed by the CA of --tls-ca",  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
    18: "self-signed, not signed by the CA of --tls-ca",  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19: "not signed by the CA of --tls-ca",  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    20: "not signed by the CA of --tls-ca",  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    62: "it must name the host given in --secondary in its subjectAltName",  # X509_V_ERR_HOSTNAME_MISMATCH
    64: "it must name the address given in --secondary in its subjectAltName",  # X509_V_ERR_IP_ADDRESS_MISMATCH
}


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """This host's certificate and private key (PEM), and the CA (PEM) that
    signed the certificates of the hosts it may talk to."""

    cert: str
    key: str
    ca: str


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """The secondary's context: presents *files.cert*, accepts only peers
    with a certificate signed by *files.ca*.

    Raises:
        TLSFileError: a file is unreadable or not what it should be.
    """
    context = _context(ssl.PROTOCOL_TLS_SERVER, files)
    context.verify_mode = ssl.CERT_REQUIRED  # the default of a server context is CERT_NONE
    context.num_tickets = 0  # sessions are long and never resumed
    return context


def client_context(files: TLSFiles) -> ssl.SSLContext:
    """The primary's context: presents *files.cert*, accepts only a
    secondary whose certificate is signed by *files.ca* and names the host
    dialled (``server_hostname``).

    Raises:
        TLSFileError: a file is unreadable or not what it should be.
    """
    context = _context(ssl.PROTOCOL_TLS_CLIENT, files)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _context(protocol: int, files: TLSFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = MINIMUM_VERSION
    for what, path in (("certificate", files.cert), ("private key", files.key), ("CA certificate", files.ca)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise TLSFileError(f"cannot read TLS {what} {path}: {exc.strerror or exc}") from None
    try:
        context.load_verify_locations(cafile=files.ca)
    except (ssl.SSLError, ValueError) as exc:
        raise TLSFileError(f"TLS CA file {files.ca} holds no usable PEM certificate ({_words(exc)})") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=files.cert)
    except (ssl.SSLError, ValueError) as exc:
        raise TLSFileError(f"TLS certificate {files.cert} holds no usable PEM certificate ({_words(exc)})") from None
    try:
        # A password callback, so that an encrypted key fails here instead of prompting on a terminal.
        context.load_cert_chain(files.cert, files.key, password=lambda: b"")
    except (ssl.SSLError, ValueError) as exc:
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            raise TLSFileError(f"TLS private key {files.key} does not belong to the certificate {files.cert}") \
                from None
        raise TLSFileError(f"TLS private key {files.key} is not an unencrypted PEM private key ({_words(exc)})") \
            from None
    return context


def failure(exc: BaseException) -> str | None:
    """Why TLS failed, in one line, from the ssl error behind *exc* (trio
    wraps it in BrokenResourceError); None when no ssl error is behind it.
    A connection that ends inside TLS is ``CLOSED``."""
    error: BaseException | None = exc
    while error is not None and not isinstance(error, ssl.SSLError):
        error = error.__cause__ or error.__context__
    if error is None:
        return None
    if isinstance(error, ssl.SSLCertVerificationError):
        hint = _VERIFY_HINTS.get(error.verify_code)
        return f"the peer's certificate was rejected: {error.verify_message}" + (f" ({hint})" if hint else "")
    assert isinstance(error, ssl.SSLError)
    reason = error.reason or ""
    if reason in _REASONS:
        return _REASONS[reason]
    if "ALERT" in reason:  # the peer refused something of ours and said so
        return f"the peer refused the handshake ({_words(error)})"
    return _words(error)


def _words(exc: BaseException) -> str:
    """OpenSSL's message without its source location:
    ``[SSL: X] some words (_ssl.c:1006)`` -> ``some words``."""
    text = str(exc)
    if "] " in text:
        text = text.split("] ", 1)[1]
    return text.rsplit(" (_ssl.c:", 1)[0] or type(exc).__name__
