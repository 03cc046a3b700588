"""The cluster CA and certificates (borealis/tls.py) and rpc's process-wide transport
setting: files and modes, what each certificate is for, and TLS handshakes between
them in memory (ssl.MemoryBIO, no sockets)."""

from __future__ import annotations

import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from borealis import rpc, tls
from borealis.errors import NotFound

pytestmark = pytest.mark.unit

HANDSHAKE_STEPS_MAX = 20


@pytest.fixture(scope="module")
def cluster_tls(tmp_path_factory: pytest.TempPathFactory) -> tls.TransportSecurity:
    return tls.ensure_cluster_tls(tmp_path_factory.mktemp("cluster") / "tls")


@pytest.fixture(scope="module")
def foreign_tls(tmp_path_factory: pytest.TempPathFactory) -> tls.TransportSecurity:
    return tls.ensure_cluster_tls(tmp_path_factory.mktemp("foreign") / "tls")


def _certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_up_writes_a_ca_and_a_node_certificate_with_private_keys(
    cluster_tls: tls.TransportSecurity,
) -> None:
    directory = cluster_tls.tls_dir
    for name in (tls.CA_KEY_FILE, tls.NODE_KEY_FILE):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    ca = _certificate(directory / tls.CA_CERT_FILE)
    node = _certificate(directory / tls.NODE_CERT_FILE)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not node.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    node.verify_directly_issued_by(ca)
    names = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usages = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert lifetime.days >= tls.CERTIFICATE_VALID_DAYS
    assert cluster_tls.ca_pem == (directory / tls.CA_CERT_FILE).read_bytes()


def test_a_second_start_keeps_the_ca_and_a_shared_ca_signs_another_cluster(
    cluster_tls: tls.TransportSecurity, tmp_path: Path
) -> None:
    again = tls.ensure_cluster_tls(cluster_tls.tls_dir)
    assert again == cluster_tls
    shared = tls.ensure_cluster_tls(tmp_path / "tls", ca_from=cluster_tls.tls_dir)
    assert shared.ca_pem == cluster_tls.ca_pem
    assert shared.node_cert_pem != cluster_tls.node_cert_pem
    ca = _certificate(cluster_tls.tls_dir / tls.CA_CERT_FILE)
    _certificate(shared.tls_dir / tls.NODE_CERT_FILE).verify_directly_issued_by(ca)
    assert stat.S_IMODE((shared.tls_dir / tls.CA_KEY_FILE).stat().st_mode) == 0o600


def test_sharing_a_ca_without_its_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "source").mkdir()
    with pytest.raises(NotFound, match="missing a file"):
        tls.ensure_cluster_tls(tmp_path / "tls", ca_from=tmp_path / "source")


def test_loading_names_the_missing_file(cluster_tls: tls.TransportSecurity, tmp_path: Path) -> None:
    (tmp_path / tls.CA_CERT_FILE).write_bytes(cluster_tls.ca_pem)
    with pytest.raises(NotFound) as missing:
        tls.load(tmp_path)
    assert str(tmp_path / tls.NODE_CERT_FILE) in str(missing.value)


def test_the_endpoint_certificate_serves_only(cluster_tls: tls.TransportSecurity) -> None:
    cert_file, key_file = tls.ensure_endpoint_certificate(cluster_tls.tls_dir)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    endpoint = _certificate(cert_file)
    endpoint.verify_directly_issued_by(_certificate(cluster_tls.tls_dir / tls.CA_CERT_FILE))
    usages = endpoint.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert tls.ensure_endpoint_certificate(cluster_tls.tls_dir) == (cert_file, key_file)
    assert cert_file.read_bytes() == endpoint.public_bytes(Encoding.PEM)


# --- handshakes in memory -------------------------------------------------------------


def _server_context(security: tls.TransportSecurity) -> ssl.SSLContext:
    """What the gRPC servers do: present the node certificate, require a client's."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(
        security.tls_dir / tls.NODE_CERT_FILE, security.tls_dir / tls.NODE_KEY_FILE
    )
    context.load_verify_locations(cadata=security.ca_pem.decode())
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _client_context(
    trusted: tls.TransportSecurity, presented: tls.TransportSecurity | None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=trusted.ca_pem.decode())
    if presented is not None:
        context.load_cert_chain(
            presented.tls_dir / tls.NODE_CERT_FILE, presented.tls_dir / tls.NODE_KEY_FILE
        )
    return context


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, host: str) -> None:
    """A full TLS handshake through memory buffers, then one byte each way (with
    TLS 1.3 a server refuses a client's certificate only after the client's side
    of the handshake finished: the refusal arrives with the first read)."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(to_client, to_server, server_hostname=host)
    server_side = server.wrap_bio(to_server, to_client, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(HANDSHAKE_STEPS_MAX):
        for name, side in (("client", client_side), ("server", server_side)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        if all(done.values()):
            break
    assert all(done.values()), done
    client_side.write(b"x")
    assert server_side.read(1) == b"x"
    server_side.write(b"y")
    assert client_side.read(1) == b"y"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_cluster_credentials_verify_both_ways(
    cluster_tls: tls.TransportSecurity, host: str
) -> None:
    _handshake(_client_context(cluster_tls, cluster_tls), _server_context(cluster_tls), host)


def test_a_client_of_another_ca_is_refused(
    cluster_tls: tls.TransportSecurity, foreign_tls: tls.TransportSecurity
) -> None:
    with pytest.raises(ssl.SSLError, match="(?i)certificate"):
        _handshake(
            _client_context(cluster_tls, foreign_tls), _server_context(cluster_tls), "localhost"
        )


def test_a_client_without_a_certificate_is_refused(cluster_tls: tls.TransportSecurity) -> None:
    with pytest.raises(ssl.SSLError, match="(?i)certificate"):
        _handshake(_client_context(cluster_tls, None), _server_context(cluster_tls), "localhost")


def test_a_server_of_another_ca_is_not_trusted(
    cluster_tls: tls.TransportSecurity, foreign_tls: tls.TransportSecurity
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(
            _client_context(cluster_tls, cluster_tls), _server_context(foreign_tls), "localhost"
        )


# --- rpc's process-wide setting -------------------------------------------------------


@pytest.fixture
def saved_transport() -> Iterator[None]:
    """Puts rpc's setting back after the test: other tests in this process use it."""
    security, resolved = rpc._Transport.security, rpc._Transport.resolved
    try:
        yield
    finally:
        rpc._Transport.security, rpc._Transport.resolved = security, resolved


def test_a_process_started_by_the_launcher_reads_its_tls_dir_from_the_environment(
    cluster_tls: tls.TransportSecurity, monkeypatch: pytest.MonkeyPatch, saved_transport: None
) -> None:
    monkeypatch.setenv(tls.TLS_DIR_ENV, str(cluster_tls.tls_dir))
    rpc._Transport.resolved = False
    assert rpc.transport() == cluster_tls
    rpc.configure_transport(None)
    assert rpc.transport() is None, "an explicit setting wins over the environment"


def test_without_the_environment_a_process_speaks_plain_grpc(
    monkeypatch: pytest.MonkeyPatch, saved_transport: None
) -> None:
    monkeypatch.delenv(tls.TLS_DIR_ENV, raising=False)
    rpc._Transport.resolved = False
    assert rpc.transport() is None


def test_a_tls_dir_without_its_files_stops_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saved_transport: None
) -> None:
    monkeypatch.setenv(tls.TLS_DIR_ENV, str(tmp_path))
    rpc._Transport.resolved = False
    with pytest.raises(NotFound, match="TLS file"):
        rpc.transport()
