"""A private CA and the certificates the campus needs: ``campusmon certs init|issue``.

The CA signs server certificates (the broker, the API) and client certificates (gateways that log
in by certificate, whose CN becomes their broker user name). Keys are EC P-256, written 0600;
a server certificate carries its host names and addresses as SANs, since clients check them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest validity clients such as Apple's accept for a server certificate
DEFAULT_SANS = ("localhost", "127.0.0.1")


class CertError(Exception):
    """A certificate request that cannot be carried out; the message says why."""


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "campusmon"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def init_ca(directory: Path, name: str = "campusmon CA", force: bool = False) -> Path:
    """``ca.crt`` and ``ca.key`` in ``directory``; refuses to replace an existing CA unless ``force``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    crt, keyf = d / "ca.crt", d / "ca.key"
    if crt.exists() and not force:
        raise CertError(f"{crt} exists; every certificate it signed depends on it (use --force to replace)")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(keyf, key)
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt


def _load_ca(d: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
    except FileNotFoundError:
        raise CertError(f"no CA in {d}; run `campusmon certs init` first") from None
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def _san(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def issue(
    directory: Path,
    name: str,
    *,
    server: bool = False,
    hosts: list[str] | None = None,
    days: int = LEAF_DAYS,
) -> tuple[Path, Path]:
    """``<name>.crt`` and ``<name>.key`` signed by the CA in ``directory``; CN is ``name``.

    A server certificate gets ``hosts`` (default localhost and 127.0.0.1) as SANs and serverAuth;
    a client certificate gets clientAuth, and its CN is the identity the broker sees.
    """
    d = Path(directory)
    ca_cert, ca_key = _load_ca(d)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        b = b.add_extension(x509.SubjectAlternativeName(_san(list(hosts or DEFAULT_SANS))), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    crt, keyf = d / f"{name}.crt", d / f"{name}.key"
    _write_key(keyf, key)
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt, keyf


def init_all(directory: Path, hosts: list[str] | None = None, force: bool = False) -> list[Path]:
    """The CA plus server certificates for the broker (``broker``) and the API (``api``)."""
    ca = init_ca(directory, force=force)
    return [
        ca,
        issue(directory, "broker", server=True, hosts=hosts)[0],
        issue(directory, "api", server=True, hosts=hosts)[0],
    ]
