"""A deployment's certificate authority: EC keys, the broker's and devices' certificates, CSR signing, the CRL.

Two levels: the root CA (its key belongs offline, on a USB stick in the town hall's safe) signs an issuing CA
that the hub keeps to sign devices' CSRs and the CRL. Mosquitto trusts both (``ca.pem`` holds the chain), so a
hub compromise is repaired by re-issuing the issuing CA from the offline root, not by re-installing every pole.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hub.errors import HubConfigError

DEVICE_DAYS = 397
"""Lifetime of a device certificate (rotate before it ends: ``nakhon provision certs expiring``)."""
CRL_DAYS = 365
"""A CRL past its nextUpdate makes Mosquitto refuse every client: the hub re-signs it at each start and each
revocation, and ``nakhon_crl_expiry_seconds`` shows how long the broker's copy has left."""


class CsrRefused(HubConfigError):
    """A certificate signing request that cannot be signed (bad signature, not an EC key, not PEM)."""


def new_key() -> ec.EllipticCurvePrivateKey:
    """A new P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM (its file must be mode 600)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    """The certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read an EC private key."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise HubConfigError(f"{path} is not an EC private key")
    return key


def load_cert(path: Path) -> x509.Certificate:
    """Read one PEM certificate."""
    return x509.load_pem_x509_certificate(path.read_bytes())


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a secret file created with ``mode`` (never readable by others, not even for an instant)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey, start: datetime,
             days: float) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
            .serial_number(x509.random_serial_number()).not_valid_before(start - timedelta(minutes=5))
            .not_valid_after(start + timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False))


def create_ca(org: str, now: datetime | None = None) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed root CA valid 20 years."""
    now = now or datetime.now(UTC)
    key = new_key()
    name = _name(f"{org} root CA", org)
    cert = (_builder(name, name, key.public_key(), now, 20 * 365)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


@dataclass(frozen=True)
class Issuer:
    """A CA that signs: its key and certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def load(cls, key: Path, cert: Path) -> Issuer:
        """Read an issuer's key and certificate files."""
        return cls(load_key(key), load_cert(cert))

    def _sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        return builder.add_extension(aki, critical=False).sign(self.key, hashes.SHA256())

    def intermediate(self, org: str, now: datetime | None = None) -> tuple[ec.EllipticCurvePrivateKey,
                                                                             x509.Certificate]:
        """An issuing CA (10 years) under this root, for the hub."""
        now = now or datetime.now(UTC)
        key = new_key()
        cert = self._sign(
            _builder(_name(f"{org} issuing CA", org), self.cert.subject, key.public_key(), now, 10 * 365)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True))
        return key, cert

    def server(self, cn: str, names: Iterable[str], public: ec.EllipticCurvePublicKey, days: float = 825,
               now: datetime | None = None) -> x509.Certificate:
        """A TLS server certificate (the broker, the hub's HTTPS) for these DNS names and IP addresses."""
        alt: list[x509.GeneralName] = []
        for n in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        return self._sign(
            _builder(_name(cn, _org(self.cert)), self.cert.subject, public, now or datetime.now(UTC), days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))

    def client(self, device: str, public: ec.EllipticCurvePublicKey, days: float = DEVICE_DAYS,
               now: datetime | None = None) -> x509.Certificate:
        """A device's client certificate: CN = the device id (the broker's user name)."""
        return self._sign(
            _builder(_name(device, _org(self.cert)), self.cert.subject, public, now or datetime.now(UTC), days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))

    def sign_csr(self, device: str, csr_pem: bytes, days: float = DEVICE_DAYS) -> x509.Certificate:
        """Sign a device's CSR; the subject is the registry's device id, whatever the CSR asks for."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as err:
            raise CsrRefused(f"not a PEM certificate signing request: {err}") from err
        try:
            if not csr.is_signature_valid:
                raise CsrRefused("the CSR's signature does not match its key")
        except InvalidSignature as err:
            raise CsrRefused("the CSR's signature does not match its key") from err
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.key_size < 256:
            raise CsrRefused("the CSR's key must be an EC key of at least 256 bits")
        return self.client(device, public, days)

    def crl(self, revoked: Iterable[tuple[int, datetime]],
            now: datetime | None = None) -> x509.CertificateRevocationList:
        """A CRL naming these (serial, revoked at) pairs, valid :data:`CRL_DAYS`."""
        now = now or datetime.now(UTC)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject)
                   .last_update(now - timedelta(minutes=5)).next_update(now + timedelta(days=CRL_DAYS)))
        for serial, at in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at).build())
        return builder.sign(self.key, hashes.SHA256())


def _org(cert: x509.Certificate) -> str:
    found = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(found[0].value) if found else "Nakhon"


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, lower-case hex (``openssl x509 -fingerprint -sha256`` prints it with
    colons, in capitals)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def normal_fingerprint(text: str) -> str:
    """A fingerprint as typed or printed (colons, spaces, any case, a ``sha256:`` prefix) in :func:`fingerprint`'s
    form; raise ValueError unless it is 32 bytes of hex."""
    value = text.strip().lower().removeprefix("sha256:").removeprefix("sha256=").replace(":", "").replace(" ", "")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"not a SHA-256 fingerprint (64 hex digits): {text[:100]!r}")
    return value


def root_of(chain: bytes) -> x509.Certificate:
    """The self-signed (root) certificate of a PEM chain."""
    for cert in x509.load_pem_x509_certificates(chain):
        if cert.subject == cert.issuer:
            return cert
    raise HubConfigError("the CA chain holds no self-signed root certificate")


class PinMismatch(HubConfigError):
    """A CA chain whose root is not the one the enrollment code names, or that holds a certificate it did not sign."""


def pinned_chain(chain: bytes, expected: str) -> x509.Certificate:
    """Check a CA chain fetched without trust: its root has the ``expected`` fingerprint and signed every other
    certificate in it (so nobody in between can slip in a CA of their own); the root."""
    try:
        certs = x509.load_pem_x509_certificates(chain)
    except ValueError as err:
        raise PinMismatch(f"the hub sent no PEM CA chain ({err})") from err
    found = {fingerprint(c): c for c in certs}
    root = found.get(expected)
    if root is None:
        raise PinMismatch(f"the hub's CA has the SHA-256 fingerprint {', '.join(found) or 'none'}, but the "
                          f"enrollment code names {expected}: this is not your deployment's hub, or someone is "
                          "in between. Do not enroll; tell the operator")
    for cert in certs:
        if cert is root:
            continue
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature) as err:
            raise PinMismatch(f"the hub's CA chain holds {cert.subject.rfc4514_string()}, which the pinned root "
                              "did not sign: do not enroll; tell the operator") from err
    return root


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    """The CRL as PEM."""
    return crl.public_bytes(serialization.Encoding.PEM)


def make_csr(device: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A CSR for ``device`` signed with its key (made on the device)."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)
