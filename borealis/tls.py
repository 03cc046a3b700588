"""The cluster's certificates: a CA created by `up`, the node certificate every
process presents on node-to-node gRPC (mutual TLS), and the server certificate of
the PostgreSQL endpoints (`up --tls`).

Files, in DATA_DIR/tls/ (keys mode 0600):
- ca.pem, ca.key: the cluster CA (EC P-256, valid 10 years). Servers accept only
  client certificates it signed; clients accept only servers it signed.
- node.pem, node.key: one certificate shared by every process of the cluster, for
  both ends of a gRPC call. A shared certificate, not one per process: the cluster
  authorizes by membership (every process may call every other), not by role, and
  processes started at run time (a replacement storage node, a reader the
  autoscaler adds) then need no issuing step.
- endpoint.pem, endpoint.key: the PostgreSQL endpoints' server certificate (only
  with `up --tls`); a separate key, so that a client-facing process's key is not
  the one that opens node-to-node calls.

Every certificate names localhost and 127.0.0.1. Rotation is not supported yet:
the certificates are valid for 10 years and a new CA means a new cluster.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from borealis.errors import NotFound

# The directory of a cluster's TLS files, under its data directory.
TLS_DIR_NAME = "tls"
# Processes started by the launcher find their TLS directory here (see rpc.transport).
TLS_DIR_ENV = "BOREALIS_TLS_DIR"
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
NODE_CERT_FILE = "node.pem"
NODE_KEY_FILE = "node.key"
ENDPOINT_CERT_FILE = "endpoint.pem"
ENDPOINT_KEY_FILE = "endpoint.key"
CERTIFICATE_VALID_DAYS = 3650
# The names every certificate carries: processes run on one machine and are
# addressed as 127.0.0.1:PORT (gRPC) or localhost (psql with sslmode=verify-full).
HOST_NAMES = ("localhost",)
HOST_ADDRESSES = ("127.0.0.1",)


@dataclass(frozen=True)
class TransportSecurity:
    """A process's credentials for node-to-node gRPC: the CA it trusts and the
    certificate it presents, as PEM bytes (read once, at load)."""

    tls_dir: Path
    ca_pem: bytes
    node_cert_pem: bytes
    node_key_pem: bytes

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.node_key_pem,
            certificate_chain=self.node_cert_pem,
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """Requires every client to present a certificate the cluster CA signed."""
        return grpc.ssl_server_credentials(
            [(self.node_key_pem, self.node_cert_pem)],
            root_certificates=self.ca_pem,
            require_client_auth=True,
        )


def load(tls_dir: Path) -> TransportSecurity:
    """The node credentials in `tls_dir`; NotFound names the first missing file."""
    tls_dir = Path(tls_dir)
    files = [tls_dir / name for name in (CA_CERT_FILE, NODE_CERT_FILE, NODE_KEY_FILE)]
    for path in files:
        if not path.is_file():
            raise NotFound("a TLS file of the cluster is missing", path=str(path))
    ca_pem, cert_pem, key_pem = (path.read_bytes() for path in files)
    return TransportSecurity(tls_dir, ca_pem, cert_pem, key_pem)


def ensure_cluster_tls(tls_dir: Path, ca_from: Path | None = None) -> TransportSecurity:
    """Creates what is missing in `tls_dir` (the CA, copied from the TLS directory
    `ca_from` when given, then the node certificate) and loads it. Existing files
    are kept: a restarted cluster keeps its CA."""
    tls_dir = Path(tls_dir)
    tls_dir.mkdir(parents=True, exist_ok=True)
    if not (tls_dir / CA_CERT_FILE).exists():
        if ca_from is not None:
            _copy_ca(Path(ca_from), tls_dir)
        else:
            key, certificate = create_ca("Borealis cluster CA")
            _write_pair(tls_dir, CA_KEY_FILE, key, CA_CERT_FILE, certificate)
    if not (tls_dir / NODE_CERT_FILE).exists():
        _issue_into(tls_dir, "borealis node", NODE_KEY_FILE, NODE_CERT_FILE, client=True)
    return load(tls_dir)


def ensure_endpoint_certificate(tls_dir: Path) -> tuple[Path, Path]:
    """The PostgreSQL endpoints' (certificate, key) files, created from the cluster
    CA (which must exist: `ensure_cluster_tls` first) when missing."""
    tls_dir = Path(tls_dir)
    if not (tls_dir / ENDPOINT_CERT_FILE).exists():
        _issue_into(tls_dir, "borealis endpoint", ENDPOINT_KEY_FILE, ENDPOINT_CERT_FILE)
    return tls_dir / ENDPOINT_CERT_FILE, tls_dir / ENDPOINT_KEY_FILE


def endpoint_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """The server side of a PostgreSQL endpoint's TLS (TLS 1.2 or newer)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def create_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA: EC P-256, valid CERTIFICATE_VALID_DAYS, signing only leaf
    certificates (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return key, builder.sign(key, hashes.SHA256())


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_certificate: x509.Certificate,
    common_name: str,
    client: bool,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A leaf certificate for HOST_NAMES and HOST_ADDRESSES, signed by the CA, for
    TLS servers and, when `client`, for TLS clients too."""
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] * client)
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in HOST_NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in HOST_ADDRESSES]
    authority = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(authority.value),
            critical=False,
        )
    )
    return key, builder.sign(ca_key, hashes.SHA256())


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    # Valid from a minute ago: a clock a little behind another process's does not
    # see a certificate from the future.
    now = datetime.datetime.now(datetime.UTC)
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_VALID_DAYS))
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _issue_into(
    tls_dir: Path, common_name: str, key_file: str, cert_file: str, client: bool = False
) -> None:
    ca_key = serialization.load_pem_private_key((tls_dir / CA_KEY_FILE).read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey), "the cluster CA key is EC P-256"
    ca_certificate = x509.load_pem_x509_certificate((tls_dir / CA_CERT_FILE).read_bytes())
    key, certificate = issue(ca_key, ca_certificate, common_name, client)
    _write_pair(tls_dir, key_file, key, cert_file, certificate)


def _write_pair(
    tls_dir: Path,
    key_file: str,
    key: ec.EllipticCurvePrivateKey,
    cert_file: str,
    certificate: x509.Certificate,
) -> None:
    """The key first (mode 0600), then the certificate: a certificate file is only
    there once its key is."""
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private(tls_dir / key_file, key_pem)
    _write_atomic(tls_dir / cert_file, certificate.public_bytes(serialization.Encoding.PEM), 0o644)


def _copy_ca(source_dir: Path, tls_dir: Path) -> None:
    for name in (CA_CERT_FILE, CA_KEY_FILE):
        if not (source_dir / name).is_file():
            raise NotFound("the CA to share is missing a file", path=str(source_dir / name))
    write_private(tls_dir / CA_KEY_FILE, (source_dir / CA_KEY_FILE).read_bytes())
    shutil.copyfile(source_dir / CA_CERT_FILE, tls_dir / CA_CERT_FILE)


def write_private(path: Path, data: bytes) -> None:
    """Writes a file only its owner may read (created with mode 0600, never wider)."""
    _write_atomic(path, data, 0o600)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    temporary.replace(path)
