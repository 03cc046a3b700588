"""Pause and resume: an idle cluster stops its instances; the next connection starts them.

With `auto_pause_s` N > 0 (cluster.json "scaling"), a cluster whose instances
finished no statement, ran none and had no client connection for N seconds is
paused: the supervisor stops the readers cleanly and parks the writer (SIGUSR2:
it closes its endpoints, engine and volume, waiting for durability as on a clean
stop, and waits in the same process; compute_node/instance.py), and cluster.json
says `paused: true` with each instance's state "paused". Storage nodes, the router
and the control plane stay up. A parked writer holds no cache, no connection and
no capacity (metering counts none); keeping its process saves the interpreter's
start and imports at the resume, which is most of a cold start. A paused instance is neither supervised (not restarted)
nor failed over (control_plane/failover.py counts only supervised states).

Resume is asked by the router (router/proxy.py) when a client logs in to an
endpoint with no instance while cluster.json says paused, and by `borealis
resume`; the router holds the login meanwhile (login_wait_ms). The parked writer
opens the volume again (SIGUSR1; Volume.open runs recovery, as after any restart;
a writer process that is gone is started instead), then the readers start.
Resume is idempotent: a second request while one runs waits for it (the
supervisor's lock) and finds the cluster running. The time from the request to
the writer serving is logged, exported (`borealis_control_plane_resume_seconds_last`)
and kept in cluster.json (`pause.resume_ms_last`).

The policy (`PausePolicy`) is sans-IO: the scaling loop (control_plane/scaling.py)
feeds it each pass what it measured, with the time passed in.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from borealis.errors import Unavailable
from borealis.log import get_logger
from borealis.wait import wait_until
from compute_node.config import PARKED_FILE

if TYPE_CHECKING:
    from control_plane.supervisor import Supervisor
    from deploy.local import InstanceProcess

log = get_logger("control_plane.pause")

PAUSED = "paused"
RUNNING = "running"
# A clean park waits for durability (bounded by the instance's shutdown grace).
PARK_TIMEOUT_S = 10.0
# How often a resume looks for the writer serving: its wait is the resume's time.
SERVING_POLL_S = 0.02


@dataclass(frozen=True)
class Activity:
    """What one pass measured of one running instance."""

    name: str
    # Seconds since it last finished or ran a statement (control_plane/autoscaler.py).
    idle_for_s: float
    # PostgreSQL client connections (the router's sessions included: each holds one).
    connections: int


@dataclass(frozen=True)
class PauseDecision:
    pause: bool
    # Seconds the whole cluster has been quiet (no statement, no connection).
    quiet_for_s: float
    reason: str


class PausePolicy:
    """Decides when the cluster is idle long enough to pause. Busy means a statement
    on any instance or a connection to any; an instance that did not answer counts
    as busy (unknown is not idle)."""

    def __init__(self) -> None:
        self._active_last_s: float | None = None

    def reset(self, now_s: float) -> None:
        """The cluster (re)started: its quiet time starts now."""
        self._active_last_s = now_s

    def observe(
        self, now_s: float, auto_pause_s: float, activity: list[Activity], unanswered: int
    ) -> PauseDecision:
        active_s = now_s if self._active_last_s is None else self._active_last_s
        if unanswered or not activity or any(each.connections > 0 for each in activity):
            active_s = now_s
        else:
            active_s = max(active_s, now_s - min(each.idle_for_s for each in activity))
        self._active_last_s = active_s
        quiet_for_s = now_s - active_s
        if auto_pause_s <= 0:
            return PauseDecision(False, quiet_for_s, "auto-pause off")
        if quiet_for_s < auto_pause_s:
            return PauseDecision(False, quiet_for_s, f"quiet {quiet_for_s:.1f}/{auto_pause_s:g} s")
        reason = f"no statement and no connection for {quiet_for_s:.1f} s (auto_pause_s {auto_pause_s:g})"
        return PauseDecision(True, quiet_for_s, reason)


@dataclass(frozen=True)
class PauseResult:
    # False: it was paused already (nothing done).
    paused: bool
    duration_s: float


@dataclass(frozen=True)
class ResumeResult:
    # False: it was running already (nothing done).
    resumed: bool
    # From the request to the writer serving (0 when nothing was done).
    duration_s: float
    writer: str


class Pauser:
    """The pause and resume actions, on the supervisor's cluster and under its lock."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        metrics = supervisor.scaler.metrics
        metrics.declare("paused", "gauge", "1 while the cluster is paused.")
        metrics.declare("pauses_total", "counter", "Pauses done.")
        metrics.declare("resumes_total", "counter", "Resumes done.")
        metrics.declare(
            "resume_seconds_last",
            "gauge",
            "The last resume: from the request to the writer serving.",
        )
        self._metrics = metrics
        metrics.set("paused", 0)

    @property
    def paused(self) -> bool:
        return bool(self._supervisor.cluster.pause.get(PAUSED))

    def pause(self, reason: str) -> PauseResult:
        """Stops every instance cleanly and marks the cluster paused."""
        supervisor = self._supervisor
        with supervisor.lock:
            if self.paused:
                return PauseResult(False, 0.0)
            began = time.monotonic()
            instances = supervisor.cluster.instances
            for instance in instances:
                instance.state = PAUSED
            self._record(paused=True, paused_at_unix_s=time.time(), pause_reason=reason)
            # The metrics before the file: whoever sees the file sees them too.
            self._metrics.set("paused", 1)
            self._metrics.inc("pauses_total")
            # Written first: the router sends no new login to an instance about to stop;
            # such a login asks for a resume, which waits for this pause to end.
            supervisor.write_cluster_file()
            # Readers first: a writer gone first would end their redo streams.
            for instance in sorted(instances, key=lambda each: each.role == "writer"):
                if instance.role == "writer":
                    self._park(instance)
                else:
                    instance.stop()
            supervisor.write_cluster_file()
            duration_s = time.monotonic() - began
        log.info(
            "cluster paused", reason=reason, instances=len(instances), seconds=round(duration_s, 3)
        )
        return PauseResult(True, duration_s)

    def resume(self, reason: str) -> ResumeResult:
        """Starts the writer (timed until it serves), then the readers."""
        supervisor = self._supervisor
        began = time.monotonic()
        with supervisor.lock:
            writer = supervisor.cluster.writer()
            if not self.paused:
                return ResumeResult(False, 0.0, writer.name)
            self._unpark_or_start(writer)
            duration_s = time.monotonic() - began
            self._record(
                paused=False,
                resumed_at_unix_s=time.time(),
                resume_ms_last=round(duration_s * 1000),
                resume_reason=reason,
            )
            self._metrics.set("paused", 0)
            self._metrics.inc("resumes_total")
            self._metrics.set("resume_seconds_last", duration_s)
            supervisor.write_cluster_file()
            log.info(
                "cluster resumed", reason=reason, writer=writer.name, seconds=round(duration_s, 3)
            )
            readers = [each for each in supervisor.cluster.instances if each.state == PAUSED]
            self._start(readers)
            # The quiet time starts once every instance runs (the readers' start is
            # not a pause's idle time).
            supervisor.scaler.resumed()
            supervisor.write_cluster_file()
        return ResumeResult(True, duration_s, writer.name)

    def _park(self, writer: InstanceProcess) -> None:
        """(Under the supervisor's lock.) Parks the writer's process (SIGUSR2: it closes
        everything and waits, warm, for the resume); stops it if it does not park."""
        marker = writer.directory / PARKED_FILE
        writer.signal(signal.SIGUSR2)
        try:
            wait_until(
                lambda: marker.exists() or not writer.is_running(),
                PARK_TIMEOUT_S,
                interval_s=0.02,
                what=f"{writer.name} to park",
            )
        except Unavailable:
            log.warning("writer did not park: stopping it", name=writer.name)
        if not marker.exists():
            writer.stop()

    def _unpark_or_start(self, writer: InstanceProcess) -> None:
        """(Under the supervisor's lock.) SIGUSR1 to a parked writer, else a new process."""
        writer.state = "starting"
        if writer.is_running() and (writer.directory / PARKED_FILE).exists():
            writer.signal(signal.SIGUSR1)
        else:
            writer.start(wait=False)
        self._await_serving([writer])

    def _start(self, instances: list[InstanceProcess]) -> None:
        """(Under the supervisor's lock.) Starts the instances at once and waits for each."""
        for instance in instances:
            instance.state = "starting"
            instance.start(wait=False)
        self._await_serving(instances)

    def _await_serving(self, instances: list[InstanceProcess]) -> None:
        supervisor = self._supervisor
        for instance in instances:
            try:
                instance.wait_serving(interval_s=SERVING_POLL_S)
            except Unavailable as error:
                # Seen as exited by the next supervision pass, which restarts it with backoff.
                log.warning("instance did not resume", name=instance.name, error=str(error)[:300])
            instance.state = RUNNING
            supervisor.started(instance)

    def _record(self, **changes: object) -> None:
        self._supervisor.cluster.pause.update(changes)
