"""The router process: PostgreSQL listeners for the writer, reader and custom
endpoints, topology from cluster.json, health and lag from polling the
instances, and the sessions (router/session.py) that relay clients to instances.

Topology: cluster.json is re-read when its modification time or size changes
(checked every topology_poll_ms); custom endpoints appear and disappear with it.
Health: every health_interval_ms each instance's gRPC health is checked, and each
reader's lag read from its Admin metrics (`borealis_instance_replica_lag_ms`;
absent counts as 0). After either changes, every session reconsiders whether its
instance still belongs to its endpoint.

Draining: an instance whose state in cluster.json is "draining" (or that was
drained through the Admin task `drain:NAME`) takes no new connections, and its
idle sessions are moved to other instances of their endpoints.

Pause: while cluster.json says `paused` (control_plane/pause.py), an endpoint has
no instance; the first login (or a session whose instance went away) that finds
none asks the control plane to resume (ControlPlane.Resume, one call at a time,
shared by every login waiting), and the logins wait up to login_wait_ms as they
do during a failover, then go on to the writer once it serves.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import secrets
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from borealis import rpc, tls
from borealis.admin import AdminService
from borealis.errors import BorealisError, InvalidRequest
from borealis.log import get_logger
from borealis.metrics import Metrics, Sample
from borealis.serving import Serving, until_stopped
from proto import admin_pb2, admin_pb2_grpc, control_pb2, control_pb2_grpc
from router import backend
from router.config import RouterConfig
from router.session import READ_BYTES, Session
from router.topology import (
    CUSTOM_PREFIX,
    READER,
    WRITER,
    Balancer,
    InstanceHealth,
    InstanceInfo,
    Topology,
    TopologyError,
    parse_cluster,
)

log = get_logger("router")

SERVICE_NAMES = ["borealis.admin.Admin"]
LAG_METRIC = "borealis_instance_replica_lag_ms"
_LAG_LINE = re.compile(rf"^{LAG_METRIC}(?:\{{[^}}]*\}})?\s+(\S+)\s*$", re.MULTILINE)
PORTS_FILE = "ports.json"
# Instances tried for one new connection before the client gets an error.
BACKEND_ATTEMPTS_MAX = 3
_BACKGROUND_TASKS_MAX = 10_000
# A resume starts the writer (a process start and recovery) and then the readers.
RESUME_TIMEOUT_S = 60.0
# After a failed Resume, the next is asked no sooner than this.
RESUME_RETRY_S = 1.0


class Router:
    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.metrics = Metrics("borealis_router")
        self.balancer = Balancer(config.reader_lag_max_ms)
        self.proxy_secret = ""
        self.backend_attempts_max = BACKEND_ATTEMPTS_MAX
        self.sessions: set[Session] = set()
        self._by_process_id: dict[int, Session] = {}
        self._connections: collections.Counter[str] = collections.Counter()
        self._listeners: dict[str, asyncio.Server] = {}
        self.ports: dict[str, int] = {}
        self._cluster_stamp: tuple[int, int] | None = None
        self._admin_channels: dict[str, Any] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._tasks: dict[str, Any] = {}
        self._resume_task: asyncio.Task[None] | None = None
        self._resume_retry_at_s = 0.0
        # Offered to clients that send SSLRequest (`up --tls`); None: answered "N".
        self.ssl_context: ssl.SSLContext | None = None
        if config.pg_tls_cert_file is not None and config.pg_tls_key_file is not None:
            self.ssl_context = tls.endpoint_ssl_context(
                config.pg_tls_cert_file, config.pg_tls_key_file
            )
        self._declare_metrics()

    def _declare_metrics(self) -> None:
        self.metrics.declare("connections", "gauge", "Client sessions by instance and endpoint.")
        self.metrics.declare("sessions", "gauge", "Client sessions by instance.")
        self.metrics.declare(
            "sessions_moved", "counter", "Idle sessions moved to another instance."
        )
        self.metrics.declare("authentication_failures", "counter", "Failed client logins.")
        self.metrics.declare(
            "health_passes", "counter", "Health passes done, sessions reconsidered after each."
        )
        self.metrics.declare("instance_healthy", "gauge", "1 when the instance serves.")
        self.metrics.declare("instance_lag_ms", "gauge", "Replica lag the router last read.")
        self.metrics.declare("resumes_requested", "counter", "Resume calls to the control plane.")
        self.metrics.declare(
            "logins_held", "counter", "Logins that waited for an instance (failover, resume)."
        )
        self.metrics.declare("login_held_ms_last", "gauge", "How long the last held login waited.")
        self.metrics.collector(self._collect)

    def _collect(self) -> list[Sample]:
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        for session in self.sessions:
            if session.instance is not None:
                counts[(session.instance, session.endpoint)] += 1
        samples: list[Sample] = [
            ("connections", {"instance": i, "endpoint": e}, n) for (i, e), n in counts.items()
        ]
        per_instance: collections.Counter[str] = collections.Counter()
        for (instance, _), number in counts.items():
            per_instance[instance] += number
        samples += [("sessions", {"instance": i}, n) for i, n in per_instance.items()]
        for name, health in self.balancer.health.items():
            samples.append(("instance_healthy", {"instance": name}, int(health.healthy)))
            samples.append(("instance_lag_ms", {"instance": name}, health.lag_ms))
        return samples

    def count(self, name: str) -> None:
        self.metrics.inc(name)

    # --- what sessions ask of the router ---

    @property
    def session_count(self) -> int:
        return len(self.sessions)

    def verifier_of(self, user: str) -> str | None:
        """The user's SCRAM verifier, read at each login (users may be added live)."""
        try:
            users = json.loads(self.config.users_file.read_text())
        except (OSError, ValueError):
            log.error("users file unreadable", path=str(self.config.users_file))
            return None
        verifier = users.get(user) if isinstance(users, dict) else None
        return verifier if isinstance(verifier, str) else None

    def choose(self, endpoint: str, exclude: Iterable[str]) -> InstanceInfo | None:
        name = self.balancer.choose(endpoint, self._connections, exclude)
        if name is None and self.balancer.topology.paused:
            self._request_resume(endpoint)
        return None if name is None else self.balancer.topology.instances[name]

    def login_held(self, endpoint: str, waited_s: float) -> None:
        """A login that found no instance at first got one after `waited_s`."""
        self.metrics.inc("logins_held")
        self.metrics.set("login_held_ms_last", round(waited_s * 1000, 1))
        log.info("held login served", endpoint=endpoint, waited_ms=round(waited_s * 1000, 1))

    # --- resume of a paused cluster ---

    def _request_resume(self, endpoint: str) -> None:
        """Asks the control plane to resume, unless a call is in flight (the logins
        waiting share it) or the last one failed a moment ago."""
        if self._resume_task is not None and not self._resume_task.done():
            return
        now_s = asyncio.get_running_loop().time()
        if now_s < self._resume_retry_at_s:
            return
        self._resume_retry_at_s = now_s + RESUME_RETRY_S
        self._resume_task = asyncio.create_task(self._resume(endpoint))

    async def _resume(self, endpoint: str) -> None:
        address = self.balancer.topology.control_plane_address
        if not address:
            log.warning("cluster is paused and cluster.json names no control plane to resume it")
            return
        self.metrics.inc("resumes_requested")
        log.info("cluster is paused; asking the control plane to resume it", endpoint=endpoint)
        began_s = asyncio.get_running_loop().time()
        request = control_pb2.ResumeRequest(reason=f"router: a login on the {endpoint} endpoint")
        channel = rpc.channel(address, 2**20)
        try:
            stub = control_pb2_grpc.ControlPlaneStub(channel)
            response = await rpc.call(
                stub.Resume(request, timeout=RESUME_TIMEOUT_S), control_plane=address
            )
        except BorealisError as error:
            log.warning("resume failed", error=str(error)[:300])
            return
        finally:
            await channel.close()
        log.info(
            "resume answered",
            resumed=response.resumed,
            resume_ms=response.resume_ms,
            writer=response.writer,
            call_ms=round((asyncio.get_running_loop().time() - began_s) * 1000, 1),
        )
        # The writer serves now: look at cluster.json and health at once rather than
        # at the next poll, so that the held logins go on sooner.
        if self._read_topology():
            await self._check_health()
            self._reconsider()

    def is_eligible(self, endpoint: str, instance: str) -> bool:
        return instance in self.balancer.eligible(endpoint)

    def is_gone(self, instance: str) -> bool:
        return self.balancer.topology.is_gone(instance)

    def link_changed(
        self, session: Session, old: backend.BackendLink | None, new: backend.BackendLink | None
    ) -> None:
        if old is not None:
            self._connections[old.instance] -= 1
        if new is not None:
            self._connections[new.instance] += 1

    def cancel(self, process_id: int, secret_key: int) -> None:
        session = self._by_process_id.get(process_id)
        if session is None or not secrets.compare_digest(
            session.secret_key.to_bytes(4, "big", signed=True),
            secret_key.to_bytes(4, "big", signed=True),
        ):
            log.info("cancel request ignored", process_id=process_id)
            return
        session.forward_cancel()

    def keep(self, task: asyncio.Task[Any]) -> None:
        """Holds a fire-and-forget task until it ends (the loop keeps only weak references)."""
        if len(self._background) >= _BACKGROUND_TASKS_MAX:
            task.cancel()
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- listeners ---

    async def _accept(
        self, endpoint: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        process_id, secret_key = self._new_key()
        session = Session(self, endpoint, reader, writer, process_id, secret_key)
        self.sessions.add(session)
        self._by_process_id[process_id] = session
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            del self._by_process_id[process_id]

    def _new_key(self) -> tuple[int, int]:
        while True:
            process_id = secrets.randbelow(2**31 - 2) + 1
            if process_id not in self._by_process_id:
                return process_id, secrets.randbits(32) - 2**31

    async def _listen(self, endpoint: str, port: int) -> None:
        server = await asyncio.start_server(
            lambda r, w: self._accept(endpoint, r, w),
            self.config.pg_host,
            port,
            limit=READ_BYTES,
            backlog=min(self.config.connections_max, 4096),
        )
        self._listeners[endpoint] = server
        self.ports[endpoint] = server.sockets[0].getsockname()[1]
        log.info("endpoint listening", endpoint=endpoint, port=self.ports[endpoint])

    async def _reconcile_listeners(self) -> None:
        """One listener per custom endpoint of cluster.json, on its port. Sessions of
        an endpoint that is removed stay until their instance leaves."""
        wanted = {
            CUSTOM_PREFIX + name: port
            for name, (port, _) in self.balancer.topology.custom_endpoints.items()
        }
        for endpoint in [e for e in self._listeners if e.startswith(CUSTOM_PREFIX)]:
            if wanted.get(endpoint) != self.ports.get(endpoint):
                self._listeners.pop(endpoint).close()
                self.ports.pop(endpoint, None)
                log.info("endpoint closed", endpoint=endpoint)
        changed = False
        for endpoint, port in wanted.items():
            if endpoint not in self._listeners:
                try:
                    await self._listen(endpoint, port)
                    changed = True
                except OSError as error:
                    # Retried at the next poll: the port may be free by then.
                    log.warning("endpoint port unavailable", endpoint=endpoint, error=str(error))
        if changed:
            self._write_ports()

    def _write_ports(self) -> None:
        path = self.config.data_dir / PORTS_FILE
        path.with_suffix(".tmp").write_text(json.dumps(self.ports, indent=2) + "\n")
        path.with_suffix(".tmp").replace(path)

    # --- topology ---

    def _read_topology(self) -> bool:
        """Re-reads cluster.json if it changed; whether it did."""
        path = self.config.cluster_file
        try:
            stat = os.stat(path)
        except OSError:
            return False
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._cluster_stamp:
            return False
        try:
            topology = parse_cluster(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TopologyError) as error:
            # Caught mid-write, or broken: keep the last good topology.
            log.warning("cluster file unreadable", error=str(error))
            return False
        self._cluster_stamp = stamp
        self._set_topology(topology)
        return True

    def _set_topology(self, topology: Topology) -> None:
        self.balancer.topology = topology
        for name in list(self.balancer.health):
            if name not in topology.instances:
                del self.balancer.health[name]
        addresses = {info.address for info in topology.instances.values()}
        for address in [a for a in self._admin_channels if a not in addresses]:
            self.keep(asyncio.create_task(self._admin_channels.pop(address).close()))
        self._tasks.clear()
        for name in topology.instances:
            self._tasks[f"drain:{name}"] = lambda n=name: self.drain(n)
            self._tasks[f"undrain:{name}"] = lambda n=name: self.undrain(n)
        log.info("topology", instances=",".join(sorted(topology.instances)))

    async def _watch_topology(self) -> None:
        interval_s = self.config.topology_poll_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            try:
                if self._read_topology():
                    await self._check_health()
                    self._reconsider()
                await self._reconcile_listeners()
            except Exception:  # noqa: BLE001 - the watch must go on
                log.error("topology update failed", exc_info=True)

    # --- health ---

    async def _check_health(self) -> None:
        instances = list(self.balancer.topology.instances.values())
        results = await asyncio.gather(*(self._health_of(i) for i in instances))
        for info, health in zip(instances, results, strict=True):
            self.balancer.health[info.name] = health

    async def _health_of(self, info: InstanceInfo) -> InstanceHealth:
        timeout_s = self.config.health_timeout_ms / 1000
        status = await rpc.health_status(info.address, timeout_s)
        health = InstanceHealth(healthy=status == "SERVING")
        if health.healthy and info.role == READER:
            health.lag_ms = await self._lag_of(info, timeout_s)
        return health

    async def _lag_of(self, info: InstanceInfo, timeout_s: float) -> float:
        """The reader's lag from its Admin metrics; unreadable counts as too far behind."""
        channel = self._admin_channels.get(info.address)
        if channel is None:
            channel = rpc.channel(info.address, 16 * 2**20)
            self._admin_channels[info.address] = channel
        try:
            response = await admin_pb2_grpc.AdminStub(channel).GetMetrics(
                admin_pb2.GetMetricsRequest(), timeout=timeout_s
            )
        except Exception as error:  # noqa: BLE001 - any failure means no lag figure
            log.info("lag unreadable", instance=info.name, error=repr(error))
            return float("inf")
        return parse_lag_ms(response.text)

    async def _watch_health(self) -> None:
        interval_s = self.config.health_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self._check_health()
                self._reconsider()
                self.metrics.inc("health_passes")
            except Exception:  # noqa: BLE001 - the watch must go on
                log.error("health check failed", exc_info=True)

    def _reconsider(self) -> None:
        for session in list(self.sessions):
            session.reconsider()

    # --- drain ---

    async def drain(self, instance: str) -> str:
        if instance not in self.balancer.topology.instances:
            raise InvalidRequest("no such instance", instance=instance)
        self.balancer.drained.add(instance)
        self._reconsider()
        remaining = sum(1 for s in self.sessions if s.instance == instance)
        return f"draining {instance}: {remaining} sessions still on it"

    async def undrain(self, instance: str) -> str:
        self.balancer.drained.discard(instance)
        return f"{instance} takes connections again"

    # --- process ---

    async def run(self) -> None:
        config = self.config
        self.proxy_secret = config.proxy_secret_file.read_text().strip()
        if not self.proxy_secret:
            raise InvalidRequest(
                "the proxy secret file is empty", path=str(config.proxy_secret_file)
            )
        self._read_topology()
        await self._check_health()
        await self._listen(WRITER, config.writer_port)
        await self._listen(READER, config.reader_port)
        await self._reconcile_listeners()
        self._write_ports()
        server = rpc.server(16 * 2**20)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminService(self.metrics, self._tasks), server)
        serving = await Serving.start(
            server,
            SERVICE_NAMES,
            config.host,
            config.port,
            config.data_dir,
            self.metrics,
            config.metrics_port,
        )
        watchers = [
            asyncio.create_task(self._watch_topology()),
            asyncio.create_task(self._watch_health()),
        ]
        log.info("router serving", name=config.name, ports=json.dumps(self.ports))
        await until_stopped()
        log.info("router stopping", name=config.name)
        for task in watchers:
            task.cancel()
        await self._close(serving)
        log.info("router stopped", name=config.name)

    async def _close(self, serving: Serving) -> None:
        for listener in self._listeners.values():
            listener.close()
        tasks = [s.task for s in self.sessions if s.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.config.shutdown_grace_ms / 1000)
        for channel in self._admin_channels.values():
            with contextlib.suppress(Exception):
                await channel.close()
        await serving.stop(self.config.shutdown_grace_ms / 1000)


def parse_lag_ms(metrics_text: str) -> float:
    """The replica lag in a Prometheus text; 0 when the metric is absent (a writer,
    or an instance that does not export it yet). Labelled samples: the largest."""
    values = [float(match) for match in _LAG_LINE.findall(metrics_text)]
    return max(values) if values else 0.0
