"""The network-fault proxy (deploy/netfault.py): fault parsing and choice without
sockets, then each fault on loopback against an echo server."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from borealis.errors import InvalidRequest
from deploy.netfault import (
    PASS,
    Fault,
    FaultTable,
    Proxy,
    ProxyHost,
    _socket_inode_of,
    control_command,
    parse_fault,
    source_pid_of,
)

SOCKET_TIMEOUT_S = 2.0


@pytest.mark.unit
def test_parse_fault_accepts_each_kind_and_refuses_the_rest() -> None:
    assert parse_fault("pass") == PASS
    assert parse_fault(" blackhole ") == Fault("blackhole")
    assert parse_fault("drop") == Fault("drop")
    assert parse_fault("delay(250)") == Fault("delay", 250)
    assert parse_fault("delay(250)").text == "delay(250)"
    for bad in ("", "delay", "delay(-1)", "delay(999999)", "lose", "pass drop"):
        with pytest.raises(InvalidRequest):
            parse_fault(bad)


@pytest.mark.unit
def test_fault_table_applies_source_faults_over_the_default() -> None:
    table = FaultTable()
    assert table.fault_for(None) == PASS and not table.needs_sources()
    table.set(Fault("blackhole"), [11, 12])
    assert table.needs_sources()
    assert table.fault_for(11) == Fault("blackhole")
    assert table.fault_for(13) == PASS
    assert table.fault_for(None) == PASS
    # Setting a source back to the default forgets it.
    table.set(PASS, [11])
    assert table.fault_for(11) == PASS and table.fault_for(12) == Fault("blackhole")
    # A new default applies to everyone and clears the per-source faults.
    table.set(Fault("drop"))
    assert table.fault_for(12) == Fault("drop") and not table.needs_sources()


@pytest.mark.unit
def test_socket_inode_is_found_by_local_port_in_proc_net_tcp() -> None:
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
        "   uid  timeout inode\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
        "  1000        0 4242 1 0000000000000000 100 0 0 10 0\n"
        "   1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000"
        "  1000        0 4343 1 0000000000000000 20 4 30 10 -1\n"
    )
    assert _socket_inode_of(8080, table) == 4242
    assert _socket_inode_of(50000, table) == 4343
    assert _socket_inode_of(1234, table) is None


@pytest.mark.unit
def test_control_lines_set_faults_and_report_status() -> None:
    proxy = Proxy("p", "127.0.0.1:1")
    assert control_command(proxy, "blackhole 5 6\n") == "ok"
    assert proxy.faults.fault_for(5) == Fault("blackhole")
    assert control_command(proxy, "delay(20)") == "ok"
    assert control_command(proxy, "status").startswith("default=delay(20) connections=0")
    with pytest.raises(InvalidRequest):
        control_command(proxy, "   ")


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo_proxy() -> Iterator[tuple[ProxyHost, str]]:
    """An echo server on loopback and a proxy in front of it."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host = ProxyHost()
    try:
        address = host.add("echo", f"127.0.0.1:{server.server_address[1]}")
        yield host, address
    finally:
        host.close()
        server.shutdown()
        server.server_close()


def _connect(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT_S)
    sock.settimeout(SOCKET_TIMEOUT_S)
    return sock


def _echo_round_trip_s(sock: socket.socket, payload: bytes = b"ping") -> float:
    started = time.monotonic()
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        received += chunk
    assert received == payload
    return time.monotonic() - started


@pytest.mark.integration
def test_pass_relays_both_ways(echo_proxy: tuple[ProxyHost, str]) -> None:
    _, address = echo_proxy
    with _connect(address) as sock:
        _echo_round_trip_s(sock, os.urandom(200_000))


@pytest.mark.integration
def test_delay_holds_each_direction(echo_proxy: tuple[ProxyHost, str]) -> None:
    host, address = echo_proxy
    with _connect(address) as sock:
        assert _echo_round_trip_s(sock) < 0.1
        host.set("echo", "delay(150)")
        # Both directions are delayed: at least twice the delay per round trip.
        assert _echo_round_trip_s(sock) >= 0.3
        host.set("echo", "pass")
        assert _echo_round_trip_s(sock) < 0.1


@pytest.mark.integration
def test_blackhole_answers_nothing_then_resets_the_connection(
    echo_proxy: tuple[ProxyHost, str],
) -> None:
    host, address = echo_proxy
    with _connect(address) as sock:
        _echo_round_trip_s(sock)
        host.set("echo", "blackhole")
        sock.settimeout(0.3)
        sock.sendall(b"lost")
        with pytest.raises(TimeoutError):
            sock.recv(10)
        host.set("echo", "pass")
        # The stream lost bytes: the proxy resets it rather than relay a corrupt rest.
        sock.settimeout(SOCKET_TIMEOUT_S)
        sock.sendall(b"after")
        assert sock.recv(10) == b""
    with _connect(address) as sock:
        _echo_round_trip_s(sock)


@pytest.mark.integration
def test_drop_resets_live_and_new_connections(echo_proxy: tuple[ProxyHost, str]) -> None:
    host, address = echo_proxy
    with _connect(address) as live:
        _echo_round_trip_s(live)
        host.set("echo", "drop")
        with pytest.raises(ConnectionError):
            live.sendall(b"x")
            if not live.recv(10):
                raise ConnectionResetError("closed")
    with _connect(address) as fresh, pytest.raises(ConnectionError):
        fresh.sendall(b"x")
        if not fresh.recv(10):
            raise ConnectionResetError("closed")
    host.set("echo", "pass")
    with _connect(address) as sock:
        _echo_round_trip_s(sock)


@pytest.mark.integration
def test_fault_for_one_source_process_spares_the_others(
    echo_proxy: tuple[ProxyHost, str],
) -> None:
    """This process is the source of its connections: a fault naming another pid
    leaves them alone, one naming this pid reaches them."""
    host, address = echo_proxy
    host.set("echo", "blackhole", [os.getpid() + 1_000_000])
    with _connect(address) as sock:
        _echo_round_trip_s(sock)
    assert source_pid_of(0) is None
    host.set("echo", "blackhole", [os.getpid()])
    with _connect(address) as sock:
        sock.settimeout(0.3)
        sock.sendall(b"lost")
        with pytest.raises(TimeoutError):
            sock.recv(10)
