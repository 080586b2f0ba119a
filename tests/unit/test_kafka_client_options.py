"""The Kafka client's TLS and SASL options come from the settings: the brokers' CA, a client
certificate for mutual TLS, SASL credentials; TLS files without a TLS protocol are refused."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from identity.settings import Settings
from sync.kafka import client_options


def self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_file, key_file


def test_tls_with_the_clusters_ca_a_client_certificate_and_sasl(tmp_path: Path) -> None:
    ca, _ = self_signed(tmp_path, "kafka-ca")
    cert, key = self_signed(tmp_path, "onesignin-client")
    settings = Settings(
        secret_key="s" * 40,
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_cafile=ca,
        kafka_ssl_certfile=cert,
        kafka_ssl_keyfile=key,
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="onesignin",
        kafka_sasl_password="secret",
    )
    options = client_options(settings, "kafka-1:9093")
    assert options["security_protocol"] == "SASL_SSL"
    assert (options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == ("SCRAM-SHA-512", "onesignin", "secret")
    assert [dict(c["subject"][0])["commonName"] for c in options["ssl_context"].get_ca_certs()] == ["kafka-ca"]
    assert options["ssl_context"].check_hostname


def test_tls_files_need_a_tls_protocol(tmp_path: Path) -> None:
    ca, _ = self_signed(tmp_path, "kafka-ca")
    with pytest.raises(ValidationError, match="ONESIGNIN_KAFKA_SECURITY_PROTOCOL=SSL"):
        Settings(secret_key="s" * 40, kafka_ssl_cafile=ca)
    assert "ssl_context" not in client_options(Settings(secret_key="s" * 40), "kafka:9092")
