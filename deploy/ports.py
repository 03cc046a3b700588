"""A port allocator that test-binds every port it hands out.

Ports come from a range below the kernel's ephemeral ports (offset by process id
so concurrent test runs rarely meet), each bound once on loopback to prove it is
free at that moment, and never handed out twice by the same allocator.
"""

from __future__ import annotations

import os
import socket

from borealis.errors import ResourceExhausted

EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


def _port_range() -> tuple[int, int]:
    """Ports below the kernel's ephemeral range. A port handed out is bound by its
    process only later; inside the ephemeral range, an outgoing connection (a
    router's, a gRPC channel's) may take it as its local port meanwhile and keep it,
    and the process then fails to start with "address already in use"."""
    try:
        with open(EPHEMERAL_RANGE_FILE) as file:
            ephemeral_low = int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768  # Linux's default
    return 10000, max(ephemeral_low, 10000 + 4096)


PORT_RANGE = _port_range()


class PortAllocator:
    def __init__(self, start: int | None = None, end: int = PORT_RANGE[1]) -> None:
        span = end - PORT_RANGE[0]
        self._next = start if start is not None else PORT_RANGE[0] + (os.getpid() * 97) % span
        self._end = end
        self._given: set[int] = set()

    def allocate(self) -> int:
        for _ in range(PORT_RANGE[1] - PORT_RANGE[0]):
            port = self._next
            self._next = self._next + 1 if self._next + 1 < self._end else PORT_RANGE[0]
            if port in self._given or not port_is_free(port):
                continue
            self._given.add(port)
            return port
        raise ResourceExhausted("no free port left in the range", range=PORT_RANGE)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
