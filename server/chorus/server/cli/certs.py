"""`chorus certs dev`: a throwaway CA, server and client certificate for local TLS and mTLS.

For development and tests only: the CA key sits next to the certificates it signs. In
production use the certificates of your own PKI with `chorus serve --tls-cert ...`.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from chorus.server.cli._common import console, create_private_file, fail

certs_app = typer.Typer(help="Certificates for TLS and mTLS.", no_args_is_help=True)

DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")
#: The files `dev` writes, in the order it writes them.
FILES = ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")


@dataclass(frozen=True, slots=True)
class _Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Chorus development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(entry: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(entry))
    except ValueError:
        return x509.DNSName(entry)


def _issue(common_name: str, issuer: _Issued | None, days: int, *, ca: bool = False,
           sans: tuple[str, ...] = (), usage: x509.ObjectIdentifier | None = None) -> _Issued:
    """A fresh P-256 key and its certificate, signed by `issuer` (self-signed when None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(common_name))
               .issuer_name(issuer.cert.subject if issuer else _name(common_name))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5))  # tolerate small clock skew
               .not_valid_after(now + timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.KeyUsage(
                   digital_signature=not ca, key_cert_sign=ca, crl_sign=ca, content_commitment=False,
                   key_encipherment=False, data_encipherment=False, key_agreement=False,
                   encipher_only=False, decipher_only=False), critical=True))
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(s) for s in sans]),
                                        critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return _Issued(cert, key)


def _pem(issued: _Issued) -> tuple[bytes, bytes]:
    return (issued.cert.public_bytes(serialization.Encoding.PEM),
            issued.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))


@certs_app.command("dev")
def dev(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the CA, server and client "
                                      "certificates and keys (created with mode 0700).")],
    san: Annotated[list[str] | None, typer.Option(
        "--san", help="Extra host name or IP address for the server certificate (repeatable); "
                      "localhost, 127.0.0.1 and ::1 are always included.")] = None,
    days: Annotated[int, typer.Option("--days", min=1, max=3650, help="Validity in days.")] = 365,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
) -> None:
    """Create a development CA, a server certificate and a client certificate (keys mode 0600)."""
    paths = {name: out / name for name in FILES}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not force:
        raise fail(f"refusing to replace {', '.join(existing)}: pass --force to issue new certificates", 2)
    sans = tuple(dict.fromkeys((*DEFAULT_SANS, *(san or ()))))
    try:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise fail(f"cannot create {out}: {exc.strerror}") from None

    ca = _issue("Chorus development CA", None, days, ca=True)
    server = _issue("localhost", ca, days, sans=sans, usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client = _issue("chorus-dev-client", ca, days, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    contents = {}
    for stem, issued in (("ca", ca), ("server", server), ("client", client)):
        contents[f"{stem}.pem"], contents[f"{stem}.key"] = _pem(issued)
    for name in FILES:
        if name.endswith(".key"):
            with os.fdopen(create_private_file(paths[name], overwrite=force), "wb") as f:
                f.write(contents[name])
        else:  # certificates are public
            paths[name].write_bytes(contents[name])

    console.print(f"Development certificates in {out} (server names: {', '.join(sans)}):")
    console.print(f"  chorus serve --tls-cert {paths['server.pem']} --tls-key {paths['server.key']} "
                  f"--client-ca {paths['ca.pem']}", highlight=False, soft_wrap=True)
    console.print(f"  chorus token list --ca {paths['ca.pem']} --client-cert {paths['client.pem']} "
                  f"--client-key {paths['client.key']} ...", highlight=False, soft_wrap=True)
