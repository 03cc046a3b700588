"""The supervisor: starts the cluster's processes, restarts those that die, keeps cluster.json.

It runs in the control plane process, which is the parent of every node process
(so it can reap them). A process that exits without being asked to is restarted
after a backoff that doubles with each quick failure; after `restarts_max` failures
within `restart_window_s` it is marked failed and left alone, so a node that
cannot start does not spin.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from borealis.errors import InvalidRequest, Unavailable
from borealis.log import get_logger
from deploy.local import InstanceProcess, LocalCluster, NodeProcess

log = get_logger("control_plane.supervisor")


@dataclass
class RestartPolicy:
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    restarts_max: int = 5
    restart_window_s: float = 60.0


@dataclass
class _History:
    restarts: list[float] = field(default_factory=list)
    next_attempt_at: float = 0.0


class Supervisor:
    def __init__(
        self,
        cluster: LocalCluster,
        control_plane_port: int,
        interval_s: float = 0.5,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.cluster = cluster
        self.control_plane_port = control_plane_port
        self.interval_s = interval_s
        self.policy = policy or RestartPolicy()
        self.stopping = threading.Event()
        # Held by the supervision loop's passes and by every change the API asks for.
        self.lock = threading.Lock()
        self._history: dict[str, _History] = {}
        self.restarts_total = 0
        self.cluster.control_plane = {
            "pid": os.getpid(),
            "port": self.control_plane_port,
            "address": f"127.0.0.1:{self.control_plane_port}",
        }

    def write_cluster_file(self) -> None:
        self.cluster.write_cluster_file()

    def start(self) -> None:
        self.cluster.start()
        self.write_cluster_file()
        log.info(
            "cluster started",
            storage_nodes=len(self.cluster.storage_nodes),
            instances=len(self.cluster.instances),
        )

    def run(self) -> None:
        """Supervises until `stopping` is set, then stops every process."""
        while not self.stopping.wait(self.interval_s):
            with self.lock:
                changed = False
                for process in self.cluster.processes():
                    changed |= self._check(process)
                if changed:
                    self.write_cluster_file()
        self.cluster.stop()
        self.write_cluster_file()
        log.info("cluster stopped")

    # -- changes asked through the API (control_plane/service.py) ----------------------

    def add_reader(self, tier: int) -> InstanceProcess:
        with self.lock:
            if not any(i.role == "writer" for i in self.cluster.instances):
                raise InvalidRequest("the cluster has no writer to read from")
            reader = self.cluster.add_reader(tier)
        log.info("reader added", name=reader.name, tier=tier, pid=reader.pid)
        return reader

    def remove_reader(self, name: str, drain_timeout_s: float) -> int:
        """Marks the reader draining (the router stops sending it new sessions and
        moves its idle ones), waits up to the timeout for its sessions to go, then
        stops and forgets it. Returns the sessions still open at the stop."""
        with self.lock:
            reader = self.cluster.instance(name)
            if reader.role != "reader":
                raise InvalidRequest(
                    "only a reader can be removed", instance=name, role=reader.role
                )
            reader.state = "draining"
            self.write_cluster_file()
        deadline = time.monotonic() + drain_timeout_s
        sessions = self.cluster.router_sessions(name)
        while sessions and time.monotonic() < deadline and not self.stopping.is_set():
            time.sleep(0.1)
            sessions = self.cluster.router_sessions(name)
        with self.lock:
            self.cluster.remove_instance(name)
        log.info("reader removed", name=name, sessions_closed=sessions)
        return sessions

    def create_endpoint(self, name: str, instances: list[str]) -> str:
        if not name or not instances:
            raise InvalidRequest("an endpoint needs a name and at least one instance")
        with self.lock:
            return self.cluster.create_endpoint(name, instances)

    def _check(self, process: NodeProcess) -> bool:
        if process.state in ("stopped", "failed", "draining") or process.is_running():
            return False
        history = self._history.setdefault(process.name, _History())
        now = time.monotonic()
        if process.state != "restarting":
            log.warning("process exited; restarting it", process=process.name, pid=process.pid)
            history.restarts = [
                t for t in history.restarts if now - t < self.policy.restart_window_s
            ]
            if len(history.restarts) >= self.policy.restarts_max:
                log.error(
                    "process keeps failing; giving up on it",
                    process=process.name,
                    log_file=str(process.log_path),
                )
                process.state = "failed"
                return True
            backoff = min(
                self.policy.backoff_max_s,
                self.policy.backoff_initial_s * 2 ** len(history.restarts),
            )
            history.next_attempt_at = now + backoff
            process.state = "restarting"
            process.stop()  # reap it
            return True
        if now < history.next_attempt_at:
            return False
        history.restarts.append(now)
        self.restarts_total += 1
        try:
            process.start(wait=True)
        except Unavailable as error:
            log.warning("restart failed", process=process.name, error=str(error).splitlines()[0])
            process.state = "running"  # seen as exited on the next check, which backs off again
            return True
        process.state = "running"
        log.info("process restarted", process=process.name, pid=process.pid)
        return True
