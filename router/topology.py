"""The cluster as the router sees it, sans-IO: which instances exist (from
cluster.json), which are healthy and how far each reader lags (from polling), and
from that which instances each endpoint may route to.

Endpoint names: "writer", "reader", and "custom:NAME" for each custom endpoint.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

WRITER = "writer"
READER = "reader"
CUSTOM_PREFIX = "custom:"
# The state in which an instance takes connections; "draining" takes none and has
# its idle sessions moved; these others mean the instance is gone. A "paused"
# instance (the whole cluster paused, control_plane/pause.py) is not gone: it comes
# back when the cluster resumes, and sessions waiting for it wait for that.
STATE_RUNNING = "running"
STATES_GONE = frozenset({"stopped", "failed", "removed"})


@dataclass(frozen=True)
class InstanceInfo:
    name: str
    role: str
    state: str
    pg_host: str
    pg_port: int
    # gRPC address (health and Admin).
    address: str


@dataclass(frozen=True)
class Topology:
    instances: Mapping[str, InstanceInfo] = field(default_factory=dict)
    # Custom endpoint name -> (port, instance names).
    custom_endpoints: Mapping[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)
    # The cluster's instances are stopped until someone asks the control plane to resume.
    paused: bool = False
    # The control plane's gRPC address (for Resume); empty when cluster.json has none.
    control_plane_address: str = ""

    def is_gone(self, name: str) -> bool:
        """Whether the instance no longer exists: removed from cluster.json or stopped."""
        instance = self.instances.get(name)
        return instance is None or instance.state in STATES_GONE


class TopologyError(ValueError):
    """cluster.json does not describe a cluster the router can use."""


def parse_cluster(document: Mapping[str, Any]) -> Topology:
    """The instances and custom endpoints of a cluster.json document."""
    instances: dict[str, InstanceInfo] = {}
    for entry in document.get("instances", []) or []:
        try:
            url = urlsplit(entry["endpoint"])
            info = InstanceInfo(
                name=str(entry["name"]),
                role=str(entry["role"]),
                state=str(entry.get("state", "")),
                pg_host=url.hostname or "127.0.0.1",
                pg_port=int(url.port or 5432),
                address=str(entry["address"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise TopologyError(f"bad instance entry: {error!r}") from None
        instances[info.name] = info
    custom: dict[str, tuple[int, tuple[str, ...]]] = {}
    for name, entry in (document.get("custom_endpoints") or {}).items():
        try:
            custom[str(name)] = (int(entry["port"]), tuple(str(n) for n in entry["instances"]))
        except (KeyError, TypeError, ValueError) as error:
            raise TopologyError(f"bad custom endpoint {name!r}: {error!r}") from None
    control_plane = document.get("control_plane") or {}
    address = control_plane.get("address", "") if isinstance(control_plane, Mapping) else ""
    return Topology(instances, custom, bool(document.get("paused")), str(address or ""))


@dataclass
class InstanceHealth:
    healthy: bool = False
    lag_ms: float = 0.0


class Balancer:
    """Chooses an instance for each new connection: the least connected of the
    endpoint's eligible instances, ties broken round-robin."""

    def __init__(self, reader_lag_max_ms: float) -> None:
        self.reader_lag_max_ms = reader_lag_max_ms
        self.topology = Topology()
        self.health: dict[str, InstanceHealth] = {}
        # Instances drained by request (besides those whose state is "draining").
        self.drained: set[str] = set()
        self._turn = itertools.count()

    def _usable(self, info: InstanceInfo) -> bool:
        health = self.health.get(info.name)
        return (
            info.state == STATE_RUNNING
            and info.name not in self.drained
            and health is not None
            and health.healthy
        )

    def eligible(self, endpoint: str) -> list[str]:
        """The instances `endpoint` may send new connections to, in name order."""
        instances = sorted(self.topology.instances.values(), key=lambda i: i.name)
        usable = [i for i in instances if self._usable(i)]
        if endpoint == WRITER:
            return [i.name for i in usable if i.role == WRITER]
        if endpoint == READER:
            readers = [
                i.name
                for i in usable
                if i.role == READER and self.health[i.name].lag_ms <= self.reader_lag_max_ms
            ]
            return readers or [i.name for i in usable if i.role == WRITER]
        if endpoint.startswith(CUSTOM_PREFIX):
            custom = self.topology.custom_endpoints.get(endpoint[len(CUSTOM_PREFIX) :])
            if custom is None:
                return []
            names = set(custom[1])
            return [i.name for i in usable if i.name in names]
        return []

    def choose(
        self, endpoint: str, connections: Mapping[str, int], exclude: Iterable[str] = ()
    ) -> str | None:
        """The instance for a new connection to `endpoint`; None when none is usable."""
        excluded = set(exclude)
        candidates = [name for name in self.eligible(endpoint) if name not in excluded]
        if not candidates:
            return None
        fewest = min(connections.get(name, 0) for name in candidates)
        tied = [name for name in candidates if connections.get(name, 0) == fewest]
        return tied[next(self._turn) % len(tied)]

    def endpoints(self) -> list[str]:
        return [WRITER, READER, *(CUSTOM_PREFIX + n for n in self.topology.custom_endpoints)]
