"""x509 credentials for TLS migration cells, made fresh for each cell.

QEMU's ``tls-creds-x509`` object reads a directory with fixed file names
(crypto/tlscredsx509.c, qcrypto_tls_creds_x509_load: ca-cert.pem,
server-cert.pem/server-key.pem for endpoint=server, client-cert.pem/
client-key.pem for endpoint=client).  The destination listens, so it is the
server; the source is the client.

Credential ids the harness understands in a cell's ``tls-creds`` parameter:
- ``tls0``: CA, a server certificate for localhost/127.0.0.1, a client
  certificate; the server verifies the client;
- ``tls-nocert``: the same server, but the source has only the CA (a client
  without a certificate, which the server must refuse).
"""
from __future__ import annotations

import datetime as _dt
import ipaddress
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KNOWN_IDS = ("tls0", "tls-nocert")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool,
          usage: list[x509.ObjectIdentifier] | None = None,
          san: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = _dt.datetime.now(_dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - _dt.timedelta(minutes=5))
               .not_valid_after(now + _dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    # A CA signs certificates and CRLs; a server or client key enciphers.
    builder = builder.add_extension(x509.KeyUsage(
        digital_signature=True, key_cert_sign=ca, crl_sign=ca, key_encipherment=not ca,
        content_commitment=False, data_encipherment=False, key_agreement=False,
        encipher_only=False, decipher_only=False), critical=True)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_credentials(workdir: Path, addresses: Sequence[str] = ()) -> tuple[Path, Path, Path]:
    """Write server, client and certificate-less client directories; return them.
    ``addresses``: further IP addresses the server certificate is valid for
    (a destination on another host: the source checks the certificate
    against the address it connects to, crypto/tlssession.c
    qcrypto_tls_session_check_certificate)."""
    ca_key = _key()
    ca = _cert("mharness test CA", ca_key, _name("mharness test CA"), ca_key, ca=True)
    server_key, client_key = _key(), _key()
    server = _cert("localhost", server_key, ca.subject, ca_key, ca=False,
                   usage=[ExtendedKeyUsageOID.SERVER_AUTH],
                   san=[x509.DNSName("localhost"),
                        *(x509.IPAddress(ipaddress.ip_address(a))
                          for a in ("127.0.0.1", *addresses))])
    client = _cert("mharness source", client_key, ca.subject, ca_key, ca=False,
                   usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    dirs = server_dir, client_dir, nocert_dir = (workdir / "tls-server", workdir / "tls-client",
                                                 workdir / "tls-nocert")
    for d in dirs:
        d.mkdir(mode=0o700)
        _pem(d / "ca-cert.pem", ca)
    _pem(server_dir / "server-cert.pem", server)
    _write_key(server_dir / "server-key.pem", server_key)
    _pem(client_dir / "client-cert.pem", client)
    _write_key(client_dir / "client-key.pem", client_key)
    return server_dir, client_dir, nocert_dir


def creds_args(creds_id: str, incoming: bool, workdir: Path,
               addresses: Sequence[str] = ()) -> list[str]:
    """The ``-object tls-creds-x509`` for one side of a cell using ``creds_id``."""
    if creds_id not in KNOWN_IDS:
        raise ValueError(f"tls-creds '{creds_id}' is not one the harness makes "
                         f"(known: {', '.join(KNOWN_IDS)})")
    server_dir = workdir / "tls-server"
    if not server_dir.exists():
        make_credentials(workdir, addresses)
    if incoming:
        return ["-object", f"tls-creds-x509,id={creds_id},endpoint=server,"
                           f"dir={server_dir},verify-peer=on"]
    client_dir = workdir / ("tls-nocert" if creds_id == "tls-nocert" else "tls-client")
    return ["-object", f"tls-creds-x509,id={creds_id},endpoint=client,dir={client_dir}"]
