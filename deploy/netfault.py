"""A TCP proxy that injects network faults between chosen processes.

The fault harness puts one proxy in front of a process (a storage node) and tells
its clients the proxy's address instead of the process's own. Every connection is
relayed in both directions under the proxy's current fault, which can change at
run time:

    pass          relay bytes as they come
    delay(MS)     relay each chunk MS milliseconds after it arrived (order kept)
    drop          reset every connection and every new one (a refused peer)
    blackhole     read and discard everything, answer nothing (a silent partition)

A fault may name source processes by pid: it then applies only to connections
opened by those processes (found through /proc/net/tcp and /proc/PID/fd, so on
Linux only), and the others keep the proxy's default. A connection that lost
bytes in a black hole is reset before it relays anything again, as TCP gives up on
a peer that stopped answering; relaying the rest would corrupt the stream.

`ProxyHost` runs proxies on an event loop in a thread of its own, for tests;
`python -m deploy.netfault --listen-port P --target HOST:PORT --control-port C`
runs one as a process, controlled by lines ("blackhole", "delay(50) 1234 5678",
"pass", "status") sent to the control port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from borealis.errors import InvalidRequest

KINDS = ("pass", "delay", "drop", "blackhole")
CHUNK_BYTES_MAX = 64 * 1024
# Chunks held by a delayed direction before its reader stops reading (back-pressure).
DELAY_QUEUE_CHUNKS_MAX = 1024
DELAY_MS_MAX = 60_000
CONNECT_TIMEOUT_S = 5.0
CONNECTIONS_MAX = 1024
CONTROL_LINE_BYTES_MAX = 4096
LOOP_CALL_TIMEOUT_S = 10.0
_ACTION = re.compile(r"^(?P<kind>pass|drop|blackhole|delay\((?P<ms>\d{1,6})\))$")


@dataclass(frozen=True)
class Fault:
    kind: str = "pass"
    delay_ms: int = 0

    @property
    def text(self) -> str:
        return f"delay({self.delay_ms})" if self.kind == "delay" else self.kind


PASS = Fault()


def parse_fault(text: str) -> Fault:
    """'pass', 'drop', 'blackhole' or 'delay(MS)'."""
    match = _ACTION.match(text.strip())
    if not match:
        raise InvalidRequest("bad network fault", fault=text)
    if match["ms"] is None:
        return Fault(match["kind"])
    delay_ms = int(match["ms"])
    if delay_ms > DELAY_MS_MAX:
        raise InvalidRequest("network delay too long", delay_ms=delay_ms, max=DELAY_MS_MAX)
    return Fault("delay", delay_ms)


@dataclass
class FaultTable:
    """The proxy's faults: a default, and faults for connections from given pids
    (sans-IO, so the choice of fault is tested without sockets)."""

    default: Fault = PASS
    by_source_pid: dict[int, Fault] = field(default_factory=dict)

    def set(self, fault: Fault, source_pids: Iterable[int] | None = None) -> None:
        """Sets the fault for the given sources, or the default (and forgets the
        per-source faults) when no sources are named."""
        if source_pids is None:
            self.default = fault
            self.by_source_pid.clear()
            return
        for pid in source_pids:
            if fault == self.default:
                self.by_source_pid.pop(pid, None)
            else:
                self.by_source_pid[pid] = fault

    def fault_for(self, source_pid: int | None) -> Fault:
        if source_pid is not None and source_pid in self.by_source_pid:
            return self.by_source_pid[source_pid]
        return self.default

    def needs_sources(self) -> bool:
        return bool(self.by_source_pid)


def _socket_inode_of(local_port: int, tcp_table: str) -> int | None:
    """The inode of the loopback TCP socket whose local port is `local_port`, from
    the text of /proc/net/tcp."""
    port_hex = f":{local_port:04X}"
    for line in tcp_table.splitlines()[1:]:
        columns = line.split()
        if len(columns) > 9 and columns[1].endswith(port_hex):
            return int(columns[9])
    return None


def source_pid_of(peer_port: int) -> int | None:
    """The pid of the local process whose socket has `peer_port` as its local port
    (the client end of a connection this proxy accepted); None if not found."""
    try:
        with open("/proc/net/tcp") as table:
            inode = _socket_inode_of(peer_port, table.read())
    except OSError:
        return None
    if not inode:
        return None
    target = f"socket:[{inode}]"
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for descriptor in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(descriptor.path) == target:
                        return int(entry.name)
    return None


class _Connection:
    """One relayed connection: two directions, each reading into a bounded queue
    and writing out of it after the delay in force when the chunk arrived."""

    def __init__(self, proxy: Proxy, source_pid: int | None) -> None:
        self.proxy = proxy
        self.source_pid = source_pid
        self.tainted = False
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task[None]] = []

    def fault(self) -> Fault:
        return self.proxy.faults.fault_for(self.source_pid)

    def abort(self) -> None:
        for writer in self.writers:
            transport = writer.transport
            if not transport.is_closing():
                transport.abort()
        for task in self.tasks:
            task.cancel()

    async def _read(self, reader: asyncio.StreamReader, queue: asyncio.Queue[Any]) -> None:
        try:
            while chunk := await reader.read(CHUNK_BYTES_MAX):
                fault = self.fault()
                if fault.kind == "drop":
                    break
                if fault.kind == "blackhole":
                    self.tainted = True
                    continue
                if self.tainted:
                    break
                release_at = time.monotonic() + fault.delay_ms / 1000
                await queue.put((release_at, chunk))
        finally:
            await queue.put(None)

    async def _write(self, queue: asyncio.Queue[Any], writer: asyncio.StreamWriter) -> None:
        while (item := await queue.get()) is not None:
            release_at, chunk = item
            pause_s = release_at - time.monotonic()
            if pause_s > 0:
                await asyncio.sleep(pause_s)
            writer.write(chunk)
            await writer.drain()
        self.abort()

    async def relay(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.writers = [client[1], server[1]]
        upstream: asyncio.Queue[Any] = asyncio.Queue(maxsize=DELAY_QUEUE_CHUNKS_MAX)
        downstream: asyncio.Queue[Any] = asyncio.Queue(maxsize=DELAY_QUEUE_CHUNKS_MAX)
        self.tasks = [
            asyncio.create_task(self._read(client[0], upstream)),
            asyncio.create_task(self._write(upstream, server[1])),
            asyncio.create_task(self._read(server[0], downstream)),
            asyncio.create_task(self._write(downstream, client[1])),
        ]
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await asyncio.gather(*self.tasks)
        self.abort()


class Proxy:
    """One listening port relaying to one target address, on the running loop."""

    def __init__(self, name: str, target: str, listen_port: int = 0) -> None:
        self.name = name
        host, _, port = target.rpartition(":")
        self.target_host, self.target_port = host, int(port)
        self.listen_port = listen_port
        self.faults = FaultTable()
        self.connections: set[_Connection] = set()
        self.accepted_total = 0
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.listen_port, reuse_address=True
        )
        self.listen_port = self._server.sockets[0].getsockname()[1]

    def set_fault(self, fault: Fault, source_pids: Iterable[int] | None = None) -> None:
        """Changes the fault at once: `drop` resets matching live connections now."""
        self.faults.set(fault, source_pids)
        for connection in list(self.connections):
            if connection.fault().kind == "drop":
                connection.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted_total += 1
        source_pid = None
        if self.faults.needs_sources():
            peer_port = writer.get_extra_info("peername")[1]
            source_pid = await asyncio.get_running_loop().run_in_executor(
                None, source_pid_of, peer_port
            )
        connection = _Connection(self, source_pid)
        if connection.fault().kind == "drop" or len(self.connections) >= CONNECTIONS_MAX:
            writer.transport.abort()
            return
        try:
            server = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        self.connections.add(connection)
        try:
            await connection.relay((reader, writer), server)
        finally:
            self.connections.discard(connection)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.abort()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), LOOP_CALL_TIMEOUT_S)


class ProxyHost:
    """Proxies on an event loop in a daemon thread, driven from synchronous code."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.proxies: dict[str, Proxy] = {}

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(LOOP_CALL_TIMEOUT_S)

    def add(self, name: str, target: str, listen_port: int = 0) -> str:
        """A new proxy in front of `target`; its listening address."""
        assert name not in self.proxies, f"proxy {name} exists"
        proxy = Proxy(name, target, listen_port)
        self._call(proxy.start())
        self.proxies[name] = proxy
        return proxy.address

    def set(self, name: str, fault: str | Fault, source_pids: Iterable[int] | None = None) -> None:
        chosen = parse_fault(fault) if isinstance(fault, str) else fault
        pids = None if source_pids is None else list(source_pids)

        async def apply() -> None:
            self.proxies[name].set_fault(chosen, pids)

        self._call(apply())

    def heal(self) -> None:
        """Every proxy back to `pass` for everyone."""
        for name in self.proxies:
            self.set(name, PASS)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        for proxy in self.proxies.values():
            self._call(proxy.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(LOOP_CALL_TIMEOUT_S)
        self._loop.close()

    def __enter__(self) -> ProxyHost:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def control_command(proxy: Proxy, line: str) -> str:
    """One control line: 'status', or a fault optionally followed by source pids."""
    words = line.split()
    if not words:
        raise InvalidRequest("empty control line")
    if words[0] == "status":
        table = proxy.faults
        sources = " ".join(f"{pid}={f.text}" for pid, f in sorted(table.by_source_pid.items()))
        return f"default={table.default.text} connections={len(proxy.connections)} {sources}"
    pids = [int(word) for word in words[1:]] or None
    proxy.set_fault(parse_fault(words[0]), pids)
    return "ok"


async def _serve_control(proxy: Proxy, control_port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ValueError):
            while line := await reader.readline():
                if len(line) > CONTROL_LINE_BYTES_MAX:
                    break
                try:
                    answer = control_command(proxy, line.decode(errors="replace"))
                except (InvalidRequest, ValueError) as error:
                    answer = f"error {error}"
                writer.write(answer.encode() + b"\n")
                await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", control_port)


async def _main(arguments: argparse.Namespace) -> None:
    proxy = Proxy("proxy", arguments.target, arguments.listen_port)
    await proxy.start()
    control = await _serve_control(proxy, arguments.control_port)
    print(f"netfault listening={proxy.address} target={arguments.target}", flush=True)
    async with control:
        await control.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--target", required=True, help="HOST:PORT to relay to")
    parser.add_argument("--control-port", type=int, required=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
