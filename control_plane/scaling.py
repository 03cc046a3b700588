"""The scaling loop: measures every instance each second and applies the policies.

A thread of the control plane, next to the supervisor's (control_plane/supervisor.py).
Each pass:
1. asks every running instance for its capacity and signals (Capacity.GetCapacity,
   proto/capacity.proto, all at once, each with a deadline);
2. feeds each instance's capacity policy (control_plane/autoscaler.py) and applies
   a changing decision with Capacity.SetCapacity (in place on the instance: the
   cache is resized and SQL reader connections added or drained, no restart);
3. feeds the reader policy (control_plane/reader_scaling.py) and, when it wants
   another reader count, adds readers (Supervisor.add_reader, which waits until the
   new reader serves) or removes one (Supervisor.remove_reader: the router stops
   sending it sessions and moves its idle ones, then it stops). A reader change
   runs on a thread of its own, so measuring and capacity changes go on meanwhile;
   one reader change at a time.

4. feeds the pause policy (control_plane/pause.py) with each instance's idle time
   and connections and, once the whole cluster has been quiet for auto_pause_s,
   pauses it (Supervisor.pause). A paused cluster is not measured; the resume comes
   from the router (the Resume RPC).

Every decision that changes something goes into the history (bounded, newest
last, `GetScalingHistory`), the log (with its inputs) and the metrics (the control
plane's Admin.GetMetrics: `borealis_control_plane_scaling_decisions_total` by kind
and direction, `..._capacity_bcu` by instance, `..._readers`, `..._idle_seconds`).

The settings are kept in cluster.json (`scaling`), so a restarted control plane
keeps them; `borealis up --min-capacity ...` and `borealis scaling set` change
them. Reader auto-scaling is off while max_readers is 0 (the default): the reader
count is then the operator's (add-reader, remove-reader).

New readers and their cache: a reader added here starts with an empty buffer cache
and warms from the reads it serves (each miss reads the page from storage). A
prewarm from the pages hot on the writer needs the writer to list its cache's
hottest page ids and the reader to read them before it takes connections; neither
path exists yet on the instances (see the report of issue 7), so it is not done.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from borealis import rpc
from borealis.errors import BorealisError
from borealis.log import get_logger
from borealis.metrics import Metrics
from control_plane.autoscaler import (
    MAX_BCU_DEFAULT,
    MIN_BCU_DEFAULT,
    CapacityPolicy,
    CapacitySettings,
    Decision,
    Sample,
)
from control_plane.pause import Activity, PausePolicy
from control_plane.reader_scaling import (
    CONNECTIONS,
    CPU,
    ReaderDecision,
    ReaderPolicy,
    ReaderSettings,
)
from proto import capacity_pb2, capacity_pb2_grpc

if TYPE_CHECKING:
    from control_plane.supervisor import Supervisor

log = get_logger("control_plane.scaling")

INTERVAL_S = 1.0
# One look at an instance, and one capacity change, at most.
GET_CAPACITY_TIMEOUT_S = 0.8
SET_CAPACITY_TIMEOUT_S = 10.0
# How long a reader scale-in waits for the reader's sessions to go.
DRAIN_TIMEOUT_S = 10.0
HISTORY_MAX = 1000
JOIN_TIMEOUT_S = 5.0
CAPACITY = "capacity"
READERS = "readers"
# The label of a reader-count decision in history when no reader was named.
CLUSTER = "cluster"
# Command line flags of `borealis up` (and `python -m control_plane`) -> settings.
SCALING_FLAGS = {
    "min_capacity": "min_capacity_bcu",
    "max_capacity": "max_capacity_bcu",
    "min_readers": "min_readers",
    "max_readers": "max_readers",
    "auto_pause_s": "auto_pause_s",
}


@dataclass(frozen=True)
class ScalingSettings:
    """What `borealis scaling set` and `up` choose; kept in cluster.json."""

    min_capacity_bcu: float = MIN_BCU_DEFAULT
    max_capacity_bcu: float = MAX_BCU_DEFAULT
    min_readers: int = 0
    # 0: reader auto-scaling off (the reader count is left to the operator).
    max_readers: int = 0
    reader_metric: str = CONNECTIONS
    reader_target: float = 4.0
    scale_out_cooldown_s: float = 10.0
    scale_in_cooldown_s: float = 60.0
    scale_in_after_s: float = 10.0
    capacity_down_after_s: float = 30.0
    capacity_up_cooldown_s: float = 5.0
    capacity_down_cooldown_s: float = 30.0
    # An idle cluster (no statement, no connection) pauses after this long (0: never).
    auto_pause_s: float = 0.0
    # Whether the loop runs at all (measures and acts).
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.auto_pause_s < 0:
            raise ValueError("auto_pause_s must not be negative (0: never)")
        self.capacity()
        self.readers()

    def capacity(self) -> CapacitySettings:
        """The capacity policy's settings (raises ValueError for bad ones)."""
        return CapacitySettings(
            min_bcu=self.min_capacity_bcu,
            max_bcu=self.max_capacity_bcu,
            down_after_s=self.capacity_down_after_s,
            up_cooldown_s=self.capacity_up_cooldown_s,
            down_cooldown_s=self.capacity_down_cooldown_s,
            idle_after_s=self.auto_pause_s or CapacitySettings.idle_after_s,
        )

    def readers(self) -> ReaderSettings:
        return ReaderSettings(
            min_readers=self.min_readers,
            max_readers=max(self.max_readers, self.min_readers),
            metric=self.reader_metric,
            target=self.reader_target,
            scale_out_cooldown_s=self.scale_out_cooldown_s,
            scale_in_cooldown_s=self.scale_in_cooldown_s,
            scale_in_after_s=self.scale_in_after_s,
        )

    @property
    def readers_enabled(self) -> bool:
        return self.max_readers > 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, document: dict[str, Any] | None) -> ScalingSettings:
        """Settings from cluster.json; unknown keys (a newer version's) are ignored."""
        known = {each.name for each in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in (document or {}).items() if key in known})

    def updated(self, changes: dict[str, Any]) -> ScalingSettings:
        """These settings with `changes` (raises ValueError for a bad result)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ScalingEvent:
    time_unix_s: float
    instance: str
    kind: str  # CAPACITY or READERS
    from_value: float
    to_value: float
    reason: str
    inputs: dict[str, float] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True)
class _Target:
    """A running instance the pass looks at."""

    name: str
    role: str
    address: str


class Scaler:
    def __init__(
        self, supervisor: Supervisor, settings: ScalingSettings, interval_s: float = INTERVAL_S
    ) -> None:
        self._supervisor = supervisor
        self.interval_s = interval_s
        # Guards everything below that the API's threads read or change.
        self._lock = threading.Lock()
        self.settings = settings
        self._policies: dict[str, CapacityPolicy] = {}
        self._reader_policy = ReaderPolicy(settings.readers())
        self._history: deque[ScalingEvent] = deque(maxlen=HISTORY_MAX)
        self.capacity_bcu: dict[str, float] = {}
        self.idle_for_s: dict[str, float] = {}
        self._reader_change: threading.Thread | None = None
        self._pause_policy = PausePolicy()
        self._channels: dict[str, grpc.Channel] = {}
        self.metrics = Metrics("borealis_control_plane")
        self._declare_metrics()

    def _declare_metrics(self) -> None:
        declare = self.metrics.declare
        declare(
            "scaling_decisions_total", "counter", "Scaling changes applied, by kind and direction."
        )
        declare("scaling_errors_total", "counter", "Scaling changes that failed, by kind.")
        declare("capacity_bcu", "gauge", "Each instance's capacity in BCUs.")
        declare("readers", "gauge", "Readers running and taking connections.")
        declare("readers_wanted", "gauge", "The reader count the policy last wanted.")
        declare("idle_seconds", "gauge", "Seconds since each instance last ran a statement.")
        declare("quiet_seconds", "gauge", "Seconds with no statement and no connection anywhere.")

    # -- the API (control_plane/service.py) ------------------------------------------------

    def set_settings(self, changes: dict[str, Any]) -> ScalingSettings:
        """Applies and persists new settings; ValueError for bad ones (nothing changes)."""
        with self._lock:
            settings = self.settings.updated(changes)
            self.settings = settings
            capacity = settings.capacity()
            for policy in self._policies.values():
                policy.reconfigure(capacity)
            self._reader_policy.reconfigure(settings.readers())
        with self._supervisor.lock:
            self._supervisor.cluster.scaling = settings.to_json()
            self._supervisor.write_cluster_file()
        log.info("scaling settings changed", **changes)
        return settings

    def history(self, limit: int = 0, instance: str = "") -> list[ScalingEvent]:
        with self._lock:
            events = [e for e in self._history if not instance or e.instance == instance]
        return events[-limit:] if limit else events

    def capacities(self) -> dict[str, float]:
        with self._lock:
            return dict(self.capacity_bcu)

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Passes every interval until the supervisor stops, then waits for a reader
        change in progress (bounded)."""
        try:
            while not self._supervisor.stopping.wait(self.interval_s):
                if not self.settings.enabled:
                    continue
                try:
                    self.tick()
                except BorealisError as error:
                    log.warning("scaling pass failed", error=str(error)[:300])
        finally:
            change = self._reader_change
            if change is not None:
                change.join(JOIN_TIMEOUT_S)
            for channel in self._channels.values():
                channel.close()

    def resumed(self) -> None:
        """The cluster resumed: its quiet time starts again now."""
        with self._lock:
            self._pause_policy.reset(time.monotonic())

    def tick(self) -> None:
        now_s = time.monotonic()
        if self._supervisor.pauser.paused:
            return
        targets = self._targets()
        states = self._poll(targets)
        with self._lock:
            self._retain({target.name for target in targets})
        self._close_channels({target.address for target in targets})
        for target in targets:
            state = states.get(target.name)
            if state is not None:
                self._capacity_pass(target, state, now_s)
        self._readers_pass(targets, states, now_s)
        self._pause_pass(targets, states, now_s)

    def _targets(self) -> list[_Target]:
        supervisor = self._supervisor
        with supervisor.lock:
            return [
                _Target(each.name, each.role, each.address)
                for each in supervisor.cluster.instances
                if each.state == "running" and each.is_running()
            ]

    def _channel(self, address: str) -> grpc.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = rpc.sync_channel(address)
        return channel

    def _poll(self, targets: list[_Target]) -> dict[str, capacity_pb2.CapacityState]:
        """Every target's capacity state, asked all at once; those that answered."""
        calls = {
            target.name: capacity_pb2_grpc.CapacityStub(
                self._channel(target.address)
            ).GetCapacity.future(capacity_pb2.GetCapacityRequest(), timeout=GET_CAPACITY_TIMEOUT_S)
            for target in targets
        }
        states = {}
        for name, call in calls.items():
            try:
                states[name] = call.result()
            except grpc.RpcError as error:
                # Restarting, promoting or stopping: looked at again next pass.
                log.debug("capacity not read", instance=name, code=str(error.code()))
        return states

    def _retain(self, names: set[str]) -> None:
        """(Under `_lock`.) Forgets instances that are gone."""
        for name in set(self._policies) - names:
            del self._policies[name]
            self.capacity_bcu.pop(name, None)
            self.idle_for_s.pop(name, None)

    def _close_channels(self, addresses: set[str]) -> None:
        """Closes the channels to instances that are gone (the loop's thread only)."""
        for address in set(self._channels) - addresses:
            self._channels.pop(address).close()

    # -- capacity ------------------------------------------------------------------------------

    def _capacity_pass(
        self, target: _Target, state: capacity_pb2.CapacityState, now_s: float
    ) -> None:
        signals = state.signals
        sample = Sample(
            bcu=state.bcu,
            cpu_fraction=signals.cpu_fraction,
            cache_hit_ratio=signals.cache_hit_ratio,
            cache_evictions_total=signals.cache_evictions_total,
            active_sessions=signals.active_sessions,
            queued_statements=signals.queued_statements,
            connections=signals.connections,
            statements_total=signals.statements_total,
        )
        with self._lock:
            policy = self._policies.get(target.name)
            if policy is None:
                policy = self._policies[target.name] = CapacityPolicy(self.settings.capacity())
            decision = policy.observe(sample, now_s)
            self.capacity_bcu[target.name] = state.bcu
            self.idle_for_s[target.name] = decision.idle_for_s
        self.metrics.set("capacity_bcu", state.bcu, instance=target.name)
        self.metrics.set("idle_seconds", decision.idle_for_s, instance=target.name)
        if decision.changes:
            self._apply_capacity(target, policy, decision)

    def _apply_capacity(self, target: _Target, policy: CapacityPolicy, decision: Decision) -> None:
        stub = capacity_pb2_grpc.CapacityStub(self._channel(target.address))
        error = ""
        try:
            state = stub.SetCapacity(
                capacity_pb2.SetCapacityRequest(bcu=decision.to_bcu),
                timeout=SET_CAPACITY_TIMEOUT_S,
            )
        except grpc.RpcError as failure:
            error = f"{failure.code()}: {failure.details()}"
        else:
            with self._lock:
                policy.applied(decision, time.monotonic())
                self.capacity_bcu[target.name] = state.bcu
            self.metrics.set("capacity_bcu", state.bcu, instance=target.name)
        event = ScalingEvent(
            time.time(),
            target.name,
            CAPACITY,
            decision.from_bcu,
            decision.to_bcu,
            decision.reason,
            decision.inputs,
            error,
        )
        self._record(event, decision.kind)

    # -- readers ---------------------------------------------------------------------------------

    def _readers_pass(
        self,
        targets: list[_Target],
        states: dict[str, capacity_pb2.CapacityState],
        now_s: float,
    ) -> None:
        settings = self.settings
        if not settings.readers_enabled:
            return
        change = self._reader_change
        if change is not None and change.is_alive():
            return
        readers = [t for t in targets if t.role == "reader"]
        measured = readers or [t for t in targets if t.role == "writer"]
        total = sum(
            _metric(states[t.name], settings.reader_metric) for t in measured if t.name in states
        )
        with self._lock:
            decision = self._reader_policy.observe(total, len(readers), now_s)
        self.metrics.set("readers", len(readers))
        self.metrics.set("readers_wanted", decision.target_readers)
        if not decision.changes:
            return
        # The least connected reader goes first (ties: the newest), for the shortest drain.
        by_load = sorted(
            readers,
            key=lambda t: (
                states[t.name].signals.connections if t.name in states else 0,
                -_number(t.name),
            ),
        )
        victim = by_load[0].name if by_load else ""
        self._reader_change = threading.Thread(
            target=self._change_readers, args=(decision, victim), name="reader-scaling", daemon=True
        )
        self._reader_change.start()

    def _change_readers(self, decision: ReaderDecision, victim: str) -> None:
        names: list[str] = []
        error = ""
        try:
            if decision.target_readers > decision.readers:
                for _ in range(decision.target_readers - decision.readers):
                    if self._supervisor.stopping.is_set():
                        break
                    names.append(self._supervisor.add_reader(tier=1).name)
            else:
                names.append(victim)
                self._supervisor.remove_reader(victim, DRAIN_TIMEOUT_S)
        except BorealisError as failure:
            error = str(failure)[:300]
        with self._lock:
            self._reader_policy.applied(time.monotonic())
        event = ScalingEvent(
            time.time(),
            ",".join(names) or CLUSTER,
            READERS,
            decision.readers,
            decision.target_readers,
            decision.reason,
            decision.inputs,
            error,
        )
        self._record(event, decision.kind)

    # -- pause -------------------------------------------------------------------------------

    def _pause_pass(
        self,
        targets: list[_Target],
        states: dict[str, capacity_pb2.CapacityState],
        now_s: float,
    ) -> None:
        activity = [
            Activity(t.name, self.idle_for_s.get(t.name, 0.0), states[t.name].signals.connections)
            for t in targets
            if t.name in states
        ]
        change = self._reader_change
        # A reader being added or removed is activity too (it is not measured yet).
        unanswered = len(targets) - len(activity) + int(change is not None and change.is_alive())
        with self._lock:
            decision = self._pause_policy.observe(
                now_s, self.settings.auto_pause_s, activity, unanswered
            )
        self.metrics.set("quiet_seconds", decision.quiet_for_s)
        if decision.pause:
            self._supervisor.pause(decision.reason)

    # -- records -------------------------------------------------------------------------------

    def _record(self, event: ScalingEvent, direction: str) -> None:
        with self._lock:
            self._history.append(event)
        if event.error:
            self.metrics.inc("scaling_errors_total", kind=event.kind)
            log.warning(
                "scaling change failed",
                instance=event.instance,
                kind=event.kind,
                from_value=event.from_value,
                to_value=event.to_value,
                error=event.error,
            )
            return
        self.metrics.inc("scaling_decisions_total", kind=event.kind, direction=direction)
        log.info(
            "scaling change",
            instance=event.instance,
            kind=event.kind,
            direction=direction,
            from_value=event.from_value,
            to_value=event.to_value,
            reason=event.reason,
            **event.inputs,
        )


def _metric(state: capacity_pb2.CapacityState, metric: str) -> float:
    if metric == CPU:
        return float(state.signals.cpu_fraction)
    return float(state.signals.connections)


def _number(name: str) -> int:
    """r12 -> 12 (names without a number sort first)."""
    digits = "".join(ch for ch in name if ch.isdigit())
    return int(digits) if digits else 0
