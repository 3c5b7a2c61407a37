"""The benchmark's TLS: a throwaway certificate and the contexts both sides use.

:func:`make_cert` writes a self-signed ECDSA P-256 certificate for
``127.0.0.1`` and ``localhost`` (valid one day, made with ``cryptography``,
nothing downloaded) into a directory; ``bench.run`` and ``bench.handshakes``
make one per comparison in their temporary directory, and every ``-tls``
server of ``bench.servers`` and every client of the run use it.

Every wss:// server gets the same :func:`server_context` (TLS 1.2 or newer
offered, as with ``fastws.Config``'s own; the ECDHE group pinned to P-256)
and every client :func:`client_context` (trusts that certificate, offers
P-256 only), so each server negotiates TLS 1.3 with a P-256 key exchange,
without a HelloRetryRequest; the cipher suite is OpenSSL's default choice
(the load generator reports it).
"""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

__all__ = ["CERT_FILE", "GROUP", "KEY_FILE", "SETTINGS", "client_context", "make_cert", "server_context"]

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
#: The one key-exchange group (and the certificate's curve), OpenSSL's name.
GROUP = "prime256v1"
#: What the reports say of the TLS setup.
SETTINGS = f"bench.tls certificate (self-signed ECDSA P-256), ECDHE {GROUP} only, TLS 1.2 or newer offered"


def make_cert(directory: Path) -> Path:
    """Write ``cert.pem`` and ``key.pem`` (self-signed, ECDSA P-256, for
    127.0.0.1 and localhost) into ``directory`` (created); return it."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fastws bench")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        # Its own trust anchor: a CA certificate that also serves.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = directory / KEY_FILE
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return directory


def server_context(directory: Path) -> ssl.SSLContext:
    """The servers' context: the certificate in ``directory``, TLS 1.2 or
    newer, key exchange on P-256 only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(directory / CERT_FILE, directory / KEY_FILE)
    context.set_ecdh_curve(GROUP)
    return context


def client_context(cafile: str | Path | None) -> ssl.SSLContext:
    """The clients' context: verifies the server against ``cafile`` (the
    system's CAs when None), offers P-256 only (OpenSSL sends a key share for
    its first group only: with X25519 first and a P-256-only server, every
    handshake would take a HelloRetryRequest)."""
    # Imported here: the servers (possibly an older fastws, for @base) import
    # this module too, and need none of the client side.
    from fastws.bench.loadgen import client_context as load_context

    return load_context(None if cafile is None else str(cafile), ecdh_curve=GROUP)
