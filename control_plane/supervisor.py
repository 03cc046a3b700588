"""The supervisor: starts the cluster's processes, restarts those that die, keeps cluster.json.

It runs in the control plane process, which is the parent of every node process
(so it can reap them). A process that exits without being asked to is restarted
after a backoff that doubles with each quick failure; after `restarts_max` failures
within `restart_window_s` it is marked failed and left alone, so a node that
cannot start does not spin.

Failover (control_plane/failover.py decides, this module acts). Each pass first asks
the policy about the writer: when it is dead and a reader can be promoted, the old
writer is fenced (its process killed if it lingers: it is hung or partitioned; storage
fences it too, by the epoch the new writer's recovery sets), its config role becomes
reader, the chosen reader's config role becomes writer and it is promoted in place
(SIGUSR1: the same process, name and ports go on as the writer, whose Volume.open
runs recovery; restarted as the writer should that fail), and cluster.json names
it, so the router's writer endpoint and the other readers follow. The old writer is
then restarted by ordinary supervision, as a reader. Without a reader the writer is
restarted in place, as before. A planned switchover (`planned_failover`, the
Failover RPC) stops the writer cleanly instead and restarts it as a reader at once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field

from borealis.errors import InvalidRequest, Unavailable
from borealis.log import get_logger
from borealis.wait import wait_until
from control_plane.failover import (
    READER,
    WRITER,
    Action,
    FailoverPolicy,
    Heartbeat,
    InstanceView,
)
from deploy.local import InstanceProcess, LocalCluster, NodeProcess

log = get_logger("control_plane.supervisor")

# Recovery and opening the engine; a reader that takes longer is restarted instead.
PROMOTE_TIMEOUT_S = 30.0


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
        interval_s: float = 0.1,
        policy: RestartPolicy | None = None,
        failover: FailoverPolicy | None = None,
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
        self.failover = failover or FailoverPolicy()
        # Guards `failover` alone: heartbeats must not wait behind a long change
        # holding `lock` (a promotion waits for the new writer to serve).
        self.heartbeat_lock = threading.Lock()
        self.failovers_total = 0
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
        for instance in self.cluster.instances:
            self._started(instance)
        log.info(
            "cluster started",
            storage_nodes=len(self.cluster.storage_nodes),
            instances=len(self.cluster.instances),
        )

    def run(self) -> None:
        """Supervises until `stopping` is set, then stops every process."""
        while not self.stopping.wait(self.interval_s):
            with self.lock:
                changed = self._failover_pass()
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
            self._started(reader)
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
        with self.heartbeat_lock:
            self.failover.forget(name)
        log.info("reader removed", name=name, sessions_closed=sessions)
        return sessions

    def create_endpoint(self, name: str, instances: list[str]) -> str:
        if not name or not instances:
            raise InvalidRequest("an endpoint needs a name and at least one instance")
        with self.lock:
            return self.cluster.create_endpoint(name, instances)

    # -- failover ------------------------------------------------------------------------------

    def heartbeat(self, name: str, beat: Heartbeat) -> int:
        """Records an instance's heartbeat (any thread); the interval it should keep, in ms."""
        with self.heartbeat_lock:
            return self.failover.heartbeat(name, beat, time.monotonic())

    def planned_failover(self, target: str) -> tuple[str, str, float]:
        """A switchover with no acknowledged commit lost: stops the writer cleanly (it
        waits for durability on shutdown; whatever was acknowledged was durable already),
        promotes `target` (or the best reader), and restarts the old writer as a reader.
        Returns (old writer, new writer, seconds without a writer)."""
        with self.lock:
            old = self.cluster.writer()
            with self.heartbeat_lock:
                chosen = self.failover.planned_target(self._views(), time.monotonic(), target)
            if chosen is None:
                raise InvalidRequest(
                    "no reader can be promoted (running, following the writer)",
                    target=target or "(best)",
                )
            log.info("planned failover", old_writer=old.name, new_writer=chosen)
            began = time.monotonic()
            old.state = "stopped"
            # The router takes no new sessions to it and moves its idle ones at once.
            self.write_cluster_file()
            old.stop()
            new = self._promote(old, self.cluster.instance(chosen))
            switchover_s = time.monotonic() - began
            old.state = "starting"
            self.write_cluster_file()
            try:
                old.start(wait=True)
            except Unavailable as error:
                # Seen as exited by the next pass, which restarts it with backoff.
                log.warning("old writer did not rejoin", name=old.name, error=str(error)[:200])
            old.state = "running"
            self._started(old)
            self.write_cluster_file()
        log.info("failover done", old_writer=old.name, new_writer=new.name, seconds=switchover_s)
        return old.name, new.name, switchover_s

    def _failover_pass(self) -> bool:
        """Acts on the policy's decision about the writer; whether cluster.json changed."""
        with self.heartbeat_lock:
            decision = self.failover.decide(self._views(), time.monotonic())
        if decision.action is Action.NONE:
            return False
        writer = self.cluster.instance(decision.writer or "")
        log.warning(
            "writer is dead",
            writer=writer.name,
            reason=decision.reason,
            action=decision.action.value,
            target=decision.target,
        )
        if decision.action is Action.RESTART_WRITER:
            # Hung: kill it, and the restart below (in _check) starts it again.
            writer.stop(immediate=True)
            return False
        began = time.monotonic()
        # Fence it for good: a hung writer must not wake up and serve as a writer.
        writer.stop(immediate=True)
        new = self._promote(writer, self.cluster.instance(decision.target or ""))
        # The old writer comes back through ordinary supervision, now as a reader.
        writer.state = "running"
        self.failovers_total += 1
        log.info(
            "failover done",
            old_writer=writer.name,
            new_writer=new.name,
            seconds=round(time.monotonic() - began, 3),
        )
        return True

    def _promote(self, old: InstanceProcess, target: InstanceProcess) -> InstanceProcess:
        """Turns `old` (already stopped) into a reader of `target`, and `target` into
        the writer, serving; cluster.json names the new writer when this returns.

        The reader is promoted in place (SIGUSR1: it stops serving as a reader and
        opens the volume as the writer in the same process, saving a process start);
        its config file says writer first, so any later start is a writer too. Should
        it not come up as the writer, it is restarted as one."""
        assert not old.is_running(), old.name
        assert target.role == READER, target.name
        self.cluster.set_role(old.name, READER, writer_address=target.address)
        self.cluster.set_role(target.name, WRITER)
        # Not "running" until it serves as the writer: the router sends it no writes.
        target.state = "starting"
        self.write_cluster_file()
        with self.heartbeat_lock:
            self.failover.started(target.name, time.monotonic())
        target.signal(signal.SIGUSR1)
        try:
            wait_until(
                lambda: not target.is_running() or self._heartbeats_as_writer(target),
                PROMOTE_TIMEOUT_S,
                interval_s=0.01,
                what=f"{target.name} to serve as the writer",
            )
        except Unavailable as error:
            log.warning("promotion in place is slow", name=target.name, error=str(error))
        if not self._heartbeats_as_writer(target):
            log.warning("promotion in place failed; restarting it as the writer", name=target.name)
            self._restart_as_writer(target)
        target.state = "running"
        self._started(target)
        self.write_cluster_file()
        return target

    def _heartbeats_as_writer(self, target: InstanceProcess) -> bool:
        with self.heartbeat_lock:
            beat = self.failover.last_heartbeat(target.name)
        return target.is_running() and beat is not None and beat.role == WRITER

    def _restart_as_writer(self, target: InstanceProcess) -> None:
        target.stop(immediate=True)
        try:
            target.start(wait=True)
        except Unavailable as error:
            # Supervision sees it exited and restarts it (as the writer) with backoff.
            log.error("promoted reader did not start", name=target.name, error=str(error)[:500])

    def _started(self, instance: InstanceProcess) -> None:
        with self.heartbeat_lock:
            self.failover.started(instance.name, time.monotonic())

    def _views(self) -> list[InstanceView]:
        return [
            InstanceView(i.name, i.role, i.tier, i.state, i.is_running())
            for i in self.cluster.instances
        ]

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
        if isinstance(process, InstanceProcess):
            self._started(process)
        log.info("process restarted", process=process.name, pid=process.pid)
        return True
