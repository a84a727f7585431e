"""The box's own TLS key and self-signed certificate: made, and read back as browsers show it.

Apart from `device` so that only the processes that make or read a certificate load `cryptography`
(about 14 MB): gunicorn's arbiter, which holds no secret, never does.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from . import facts

# A box may boot with its clock far off (no RTC, no time sync yet): the certificate is valid from a date
# before any box was made, for twenty years.
NOT_BEFORE = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
VALID_FOR = datetime.timedelta(days=20 * 365)


def new_key() -> bytes:
    """A P-256 private key, PEM (PKCS#8, unencrypted: the data partition's permissions guard it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def self_signed(key_pem: bytes, names: list[str], ips: list) -> bytes:
    """A server certificate for `names` and `ips`, signed by the key it certifies, PEM."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, facts.MDNS_NAME),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PAL-adin (this box's own certificate)")])
    san = x509.SubjectAlternativeName([x509.DNSName(n) for n in names] + [x509.IPAddress(a) for a in ips])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOT_BEFORE).not_valid_after(NOT_BEFORE + VALID_FOR)
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert_pem: bytes) -> str:
    """The certificate's SHA-256 fingerprint as browsers show it (AB:CD:...)."""
    return x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256()).hex(":").upper()
