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

Storage node replacement (`replace_storage_node`, the ReplaceStorageNode RPC, and
automatically: control_plane/storage_replacement.py decides, a watcher thread acts).
A new node (a name never used before) starts in the old node's AZ; the writer's
Membership.ReplaceStorageNode moves every PG with a segment on the old node to it
(transitional quorum while it hydrates, then the new set alone); then the old node
is killed, its directory deleted, and cluster.json lists the new set, so every
process started later uses it. The long wait for the writer runs outside `lock`
(supervision, failover and other changes go on; the new node is supervised like
any other once it serves); only the short steps before and after take it. A second
replacement waits for the first (`_replacing`). A failed one leaves the new node
running and recorded (cluster.json `storage_replacements`), so a retry reuses it
and the writer continues the same change.

Pause and resume (control_plane/pause.py decides and acts, under `lock`). A paused
cluster's instances are stopped with state "paused": supervision leaves them alone
and failover does not count them (not a supervised state), until `resume`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import grpc

from borealis import rpc
from borealis.errors import BorealisError, InvalidRequest, Unavailable, from_grpc
from borealis.log import get_logger
from borealis.wait import wait_until
from control_plane import storage_replacement
from control_plane.failover import (
    READER,
    WRITER,
    Action,
    FailoverPolicy,
    Heartbeat,
    InstanceView,
)
from control_plane.pause import PAUSED, Pauser, PauseResult, ResumeResult
from control_plane.scaling import Scaler, ScalingSettings
from control_plane.storage_replacement import Change, Decision, StorageReplacementPolicy
from deploy.local import InstanceProcess, LocalCluster, NodeProcess, StorageNodeProcess
from proto import membership_pb2, membership_pb2_grpc

log = get_logger("control_plane.supervisor")

# Recovery and opening the engine; a reader that takes longer is restarted instead.
PROMOTE_TIMEOUT_S = 30.0
# The writer answers DEADLINE_EXCEEDED itself when hydration outlasts the timeout it
# is given; the call's own deadline leaves it this much longer to say so.
WRITER_RPC_MARGIN_S = 10.0
# One look at a storage node's gRPC health, at most.
STORAGE_HEALTH_TIMEOUT_S = 1.0
# How long the supervision loop waits for the storage watcher at shutdown.
WATCHER_JOIN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ReplacementResult:
    old_node: str
    new_node: str
    pgs: list[int]
    duration_s: float


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
        replacement: StorageReplacementPolicy | None = None,
        scaling: ScalingSettings | None = None,
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
        self.replacement = replacement or StorageReplacementPolicy()
        # Guards `replacement`, for the same reason as `heartbeat_lock`. Taken after
        # `lock` when both are needed, never before.
        self.replacement_lock = threading.Lock()
        # Held for a whole replacement (long: hydration), never together with a wait
        # for `lock`'s holder: one replacement at a time.
        self._replacing = threading.Lock()
        self.replacements_total = 0
        # The node whose "waiting for a writer" decision was logged last (logged once).
        self._deferral_logged: str | None = None
        # Automatic scaling (control_plane/scaling.py). Without settings: those kept
        # in cluster.json, else off (a cluster built in a test scales only if asked).
        if scaling is None:
            kept = self.cluster.scaling
            scaling = ScalingSettings.from_json(kept) if kept else ScalingSettings(enabled=False)
        self.cluster.scaling = scaling.to_json()
        self.scaler = Scaler(self, scaling)
        # Pause and resume (control_plane/pause.py): the scaling loop asks for a pause,
        # the router (through the Resume RPC) for a resume.
        self.pauser = Pauser(self)
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
            self.started(instance)
        log.info(
            "cluster started",
            storage_nodes=len(self.cluster.storage_nodes),
            instances=len(self.cluster.instances),
        )

    def run(self) -> None:
        """Supervises until `stopping` is set, then stops every process."""
        watcher = threading.Thread(target=self._watch_storage, name="storage-watch", daemon=True)
        if self.replacement.settings.enabled:
            watcher.start()
        scaler = threading.Thread(target=self.scaler.run, name="scaling", daemon=True)
        scaler.start()
        while not self.stopping.wait(self.interval_s):
            with self.lock:
                changed = self._failover_pass()
                for process in self.cluster.processes():
                    changed |= self._check(process)
                if changed:
                    self.write_cluster_file()
        if watcher.is_alive():
            # A replacement in progress fails once its writer stops; not waited for.
            watcher.join(WATCHER_JOIN_TIMEOUT_S)
        # A reader it is adding stops with the cluster below.
        scaler.join(WATCHER_JOIN_TIMEOUT_S)
        with self.lock:
            self.cluster.stop()
            self.write_cluster_file()
        log.info("cluster stopped")

    # -- changes asked through the API (control_plane/service.py) ----------------------

    def pause(self, reason: str) -> PauseResult:
        return self.pauser.pause(reason)

    def resume(self, reason: str) -> ResumeResult:
        return self.pauser.resume(reason)

    def add_reader(self, tier: int) -> InstanceProcess:
        """Starts a new reader and waits for it to serve. The wait (a process start
        and the prewarm, seconds) is outside the lock, so that failover and
        supervision go on meanwhile; a reader that fails to start is forgotten."""
        with self.lock:
            if not any(i.role == "writer" for i in self.cluster.instances):
                raise InvalidRequest("the cluster has no writer to read from")
            if self.pauser.paused:
                raise InvalidRequest("the cluster is paused; resume it first")
            reader = self.cluster.add_reader(tier, wait=False)
        try:
            reader.wait_serving()
        except Unavailable:
            with self.lock:
                self.cluster.remove_instance(reader.name)
            raise
        with self.lock:
            # A pause or a stop while it started has decided its state already.
            if reader.state == "starting":
                reader.state = "running"
                self.started(reader)
                self.write_cluster_file()
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

    # -- storage node replacement ------------------------------------------------------------

    def replace_storage_node(
        self, name: str, timeout_s: float, queue_timeout_s: float | None = None
    ) -> ReplacementResult:
        """Replaces storage node `name` by a new node in its AZ (see the module doc).
        Waits up to `queue_timeout_s` (default: `timeout_s`) for a replacement in
        progress to finish first. Raises NotFound for an unknown node, Unavailable
        without a running writer or when the writer's change did not finish in time
        (the new node stays; a retry continues)."""
        queue_timeout_s = timeout_s if queue_timeout_s is None else queue_timeout_s
        if not self._replacing.acquire(timeout=queue_timeout_s):
            with self.replacement_lock:
                busy = self.replacement.in_progress
            raise Unavailable("another storage node replacement is in progress", node=busy)
        try:
            return self._replace(name, timeout_s)
        finally:
            self._replacing.release()

    def _replace(self, name: str, timeout_s: float) -> ReplacementResult:
        began = time.monotonic()
        with self.lock:
            writer_address, new, registered = self._replacement_target(name)
        with self.replacement_lock:
            self.replacement.started(name)
        succeeded = False
        try:
            if not registered:
                self._start_new_node(name, new)
            log.info(
                "replacing storage node",
                old_node=name,
                new_node=new.name,
                az=new.az,
                address=new.address,
                writer=writer_address,
            )
            pgs = replace_on_writer(writer_address, name, new, timeout_s)
            with self.lock:
                self.cluster.remove_storage_node(name)
                self._history.pop(name, None)
            succeeded = True
        finally:
            with self.replacement_lock:
                self.replacement.finished(name, succeeded, time.monotonic())
                self.replacements_total += int(succeeded)
        result = ReplacementResult(name, new.name, pgs, time.monotonic() - began)
        log.info(
            "storage node replaced",
            old_node=name,
            new_node=new.name,
            pgs=len(pgs),
            seconds=round(result.duration_s, 3),
        )
        return result

    def _replacement_target(self, name: str) -> tuple[str, StorageNodeProcess, bool]:
        """(Under `lock`.) The writer's address, the node to replace `name` with (the
        one a failed attempt started, else a new one), and whether it is part of the
        cluster already (else it is still to be started)."""
        old = self.cluster.node(name)
        replacing = {new: each for each, new in self.cluster.storage_replacements.items()}
        if name in replacing:
            raise InvalidRequest(
                "the node is the new node of a replacement that has not finished; "
                "replace the old node again to finish it",
                node=name,
                old_node=replacing[name],
            )
        writer = self._writer_serving()
        if writer is None:
            raise Unavailable("the cluster has no running writer to move the segments", node=name)
        pending = self.cluster.storage_replacements.get(name)
        for node in self.cluster.storage_nodes:
            if node.name == pending:
                return writer.address, node, True
        new = self.cluster.new_storage_node(old.az)
        self.cluster.storage_replacements[name] = new.name
        return writer.address, new, False

    def _start_new_node(self, old: str, new: StorageNodeProcess) -> None:
        """Starts the new node outside `lock` (a process start takes a second or two),
        then makes it part of the cluster; on failure forgets it."""
        new.state = "starting"
        try:
            new.start(wait=True)
        except BaseException:
            with self.lock:
                self.cluster.discard_storage_node(new)
                self.cluster.storage_replacements.pop(old, None)
            raise
        with self.lock:
            new.state = "running"
            self.cluster.register_storage_node(new)

    def _writer_serving(self) -> InstanceProcess | None:
        for instance in self.cluster.instances:
            if instance.role == WRITER and instance.state == "running" and instance.is_running():
                return instance
        return None

    def _watch_storage(self) -> None:
        """Looks at every storage node each check interval and replaces one that has
        been down too long (the policy decides)."""
        settings = self.replacement.settings
        while not self.stopping.wait(settings.check_interval_s):
            decision = self._storage_pass()
            if decision.action is not storage_replacement.Action.REPLACE:
                continue
            assert decision.node is not None
            try:
                self.replace_storage_node(
                    decision.node, settings.replace_timeout_s, queue_timeout_s=0
                )
            except BorealisError as error:
                log.warning(
                    "automatic storage node replacement failed; it is tried again later",
                    node=decision.node,
                    retry_after_s=settings.retry_after_s,
                    error=str(error)[:300],
                )

    def _storage_pass(self) -> Decision:
        with self.lock:
            looks = [(n.name, n.address, n.is_running()) for n in self.cluster.storage_nodes]
            writer_available = self._writer_serving() is not None
        up = asyncio.run(storage_nodes_up(looks, STORAGE_HEALTH_TIMEOUT_S))
        now_s = time.monotonic()
        # Both locks (always in this order): a node removed since the looks (a
        # replacement finished meanwhile) must not be observed again after the
        # policy forgot it, or it would stay "down" there for good.
        with self.lock, self.replacement_lock:
            current = {node.name for node in self.cluster.storage_nodes}
            self.replacement.retain(current)
            for name, is_up in up.items():
                if name in current:
                    self._log_change(name, self.replacement.observe(name, is_up, now_s))
            decision = self.replacement.decide(now_s, writer_available)
        self._log_decision(decision)
        return decision

    def _log_change(self, name: str, change: Change) -> None:
        if change is Change.WENT_DOWN:
            log.warning("storage node is down", node=name)
        elif change is Change.CAME_BACK:
            log.info("storage node is back", node=name)

    def _log_decision(self, decision: Decision) -> None:
        waiting = decision.action is storage_replacement.Action.WAIT_FOR_WRITER
        if decision.action is storage_replacement.Action.REPLACE:
            log.warning(
                "replacing a storage node that is down", node=decision.node, reason=decision.reason
            )
        elif waiting and self._deferral_logged != decision.node:
            # Taken again every pass until a writer serves: logged once per node.
            log.warning(
                "storage node replacement waits for a writer",
                node=decision.node,
                reason=decision.reason,
            )
        self._deferral_logged = decision.node if waiting else None

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
            self.started(old)
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
        self.started(target)
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

    def started(self, instance: InstanceProcess) -> None:
        with self.heartbeat_lock:
            self.failover.started(instance.name, time.monotonic())

    def _views(self) -> list[InstanceView]:
        return [
            InstanceView(i.name, i.role, i.tier, i.state, i.is_running())
            for i in self.cluster.instances
        ]

    def _check(self, process: NodeProcess) -> bool:
        if process.state in ("stopped", "failed", "draining", PAUSED) or process.is_running():
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
            self.started(process)
        log.info("process restarted", process=process.name, pid=process.pid)
        return True


async def storage_nodes_up(looks: list[tuple[str, str, bool]], timeout_s: float) -> dict[str, bool]:
    """Whether each (name, address, process running) node is up: its process runs and
    its gRPC health says SERVING (a hung node's process runs but does not answer)."""

    async def up(address: str, running: bool) -> bool:
        return running and await rpc.health_status(address, timeout_s) == "SERVING"

    results = await asyncio.gather(*(up(address, running) for _, address, running in looks))
    return {name: result for (name, _, _), result in zip(looks, results, strict=True)}


def replace_on_writer(
    writer_address: str, old: str, new: StorageNodeProcess, timeout_s: float
) -> list[int]:
    """The writer's Membership.ReplaceStorageNode; the PGs that moved."""
    request = membership_pb2.ReplaceStorageNodeRequest(
        old_node=old,
        new_node=new.name,
        new_address=new.address,
        new_az=new.az,
        timeout_ms=round(timeout_s * 1000),
    )
    with rpc.sync_channel(writer_address) as channel:
        stub = membership_pb2_grpc.MembershipStub(channel)
        try:
            response = stub.ReplaceStorageNode(request, timeout=timeout_s + WRITER_RPC_MARGIN_S)
        except grpc.RpcError as error:
            raise from_grpc(error, node=old, new_node=new.name, writer=writer_address) from None
    return list(response.pgs)
