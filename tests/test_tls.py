"""Per-cell x509 credentials: the files QEMU expects, chained to one CA."""
from __future__ import annotations

import pytest
from cryptography import x509

from harness.migration.tls import creds_args, make_credentials


def test_credentials_have_qemu_file_names_and_chain_to_the_ca(tmp_path):
    server, client, nocert = make_credentials(tmp_path)
    assert {p.name for p in server.iterdir()} == {"ca-cert.pem", "server-cert.pem", "server-key.pem"}
    assert {p.name for p in client.iterdir()} == {"ca-cert.pem", "client-cert.pem", "client-key.pem"}
    assert {p.name for p in nocert.iterdir()} == {"ca-cert.pem"}
    ca = x509.load_pem_x509_certificate((server / "ca-cert.pem").read_bytes())
    for path in (server / "server-cert.pem", client / "client-cert.pem"):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        cert.verify_directly_issued_by(ca)
    san = x509.load_pem_x509_certificate((server / "server-cert.pem").read_bytes()) \
        .extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert (server / "server-key.pem").stat().st_mode & 0o077 == 0


def test_creds_args_per_side(tmp_path):
    dst = creds_args("tls0", True, tmp_path)
    src = creds_args("tls-nocert", False, tmp_path)
    assert "endpoint=server" in dst[1] and "verify-peer=on" in dst[1]
    assert "endpoint=client" in src[1] and "tls-nocert" in src[1]
    with pytest.raises(ValueError, match="not one the harness makes"):
        creds_args("other", True, tmp_path)
