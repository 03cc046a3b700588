"""The seeded fault injector: what to break is drawn from one seed, printed at start.

Faults: kill -9 and restart of any process, SIGSTOP/SIGCONT, a whole AZ down,
failpoints set through the Admin API, and network faults through the proxies of
deploy/netfault.py that the fault cluster puts in front of every storage node.
Every fault is logged with the time since the injector started, and `heal()`
undoes whatever is still in force, so a test ends on a whole cluster.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from dataclasses import dataclass, field

from borealis import rpc
from borealis.wait import wait_until
from deploy.local import LocalCluster, NodeProcess, StorageNodeProcess
from deploy.netfault import ProxyHost
from proto import admin_pb2, admin_pb2_grpc

ADMIN_TIMEOUT_S = 5.0
RESTART_TIMEOUT_S = 30.0


async def _set_failpoint(address: str, name: str, action: str) -> None:
    async with rpc.channel(address) as channel:
        await admin_pb2_grpc.AdminStub(channel).SetFailpoint(
            admin_pb2.SetFailpointRequest(name=name, action=action), timeout=ADMIN_TIMEOUT_S
        )


@dataclass
class FaultInjector:
    """Faults on one cluster, chosen by `rng` (seeded by the test's fault seed)."""

    cluster: LocalCluster
    seed: int
    proxies: ProxyHost | None = None
    # Each storage node's own gRPC address (node.address may be its proxy's).
    real_addresses: dict[str, str] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    rng: random.Random = field(init=False)
    _killed: dict[str, NodeProcess] = field(default_factory=dict, init=False)
    _paused: dict[str, NodeProcess] = field(default_factory=dict, init=False)
    _failpoints: set[tuple[str, str]] = field(default_factory=set, init=False)
    _network_faulted: set[str] = field(default_factory=set, init=False)
    _started_s: float = field(default_factory=time.monotonic, init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.note(f"fault injector seed={self.seed} (replay: BOREALIS_FAULT_SEED={self.seed})")

    def note(self, text: str) -> None:
        line = f"[fault +{time.monotonic() - self._started_s:6.2f}s] {text}"
        self.events.append(line)
        print(line, flush=True)

    # --- choices -------------------------------------------------------------------

    def storage_nodes(self, count: int) -> list[StorageNodeProcess]:
        return sorted(self.rng.sample(self.cluster.storage_nodes, count), key=lambda n: n.name)

    def az_plus_one(self) -> tuple[str, list[StorageNodeProcess]]:
        """A whole AZ (both its nodes) and one node of another AZ."""
        az = self.rng.choice(sorted({node.az for node in self.cluster.storage_nodes}))
        in_az = [node for node in self.cluster.storage_nodes if node.az == az]
        other = self.rng.choice([node for node in self.cluster.storage_nodes if node.az != az])
        return az, [*in_az, other]

    def pause_s(self, low_s: float, high_s: float) -> float:
        return round(self.rng.uniform(low_s, high_s), 2)

    # --- process faults -------------------------------------------------------------

    def kill(self, process: NodeProcess) -> None:
        self.note(f"kill -9 {process.name} (pid {process.pid})")
        process.kill()
        self._killed[process.name] = process

    def restart(self, process: NodeProcess) -> None:
        """Starts a killed process again and waits until it serves."""
        self.note(f"restart {process.name}")
        process.start(wait=False)
        self._killed.pop(process.name, None)
        address = self.real_addresses.get(process.name)
        if address is None:
            process.wait_serving(RESTART_TIMEOUT_S)
        else:
            # Health through the node's own port: its proxy may be faulted.
            saved, process.address = process.address, address
            try:
                process.wait_serving(RESTART_TIMEOUT_S)
            finally:
                process.address = saved
        self.note(f"{process.name} serving again (pid {process.pid})")

    def stop_signal(self, process: NodeProcess) -> None:
        self.note(f"SIGSTOP {process.name}")
        process.signal(signal.SIGSTOP)
        self._paused[process.name] = process

    def continue_signal(self, process: NodeProcess) -> None:
        self.note(f"SIGCONT {process.name}")
        process.signal(signal.SIGCONT)
        self._paused.pop(process.name, None)

    # --- failpoints and the network -------------------------------------------------

    def failpoint(self, process: NodeProcess, name: str, action: str) -> None:
        self.note(f"failpoint {name}={action} on {process.name}")
        address = self.real_addresses.get(process.name, process.address)
        asyncio.run(_set_failpoint(address, name, action))
        if action == "off":
            self._failpoints.discard((process.name, name))
        else:
            self._failpoints.add((process.name, name))

    def network(self, node: str, fault: str, source_pids: list[int] | None = None) -> None:
        """A network fault on the traffic into storage node `node` (from the given
        source processes, or from everyone)."""
        assert self.proxies is not None, "this cluster has no network-fault proxies"
        sources = "everyone" if source_pids is None else f"pids {source_pids}"
        self.note(f"network {fault} into {node} from {sources}")
        self.proxies.set(node, fault, source_pids)
        self._network_faulted.add(node)

    # --- undo -----------------------------------------------------------------------

    def heal(self) -> None:
        """Undoes every fault in force: SIGCONT, network back to pass, failpoints
        off, killed processes started again."""
        for process in list(self._paused.values()):
            self.continue_signal(process)
        if self.proxies is not None and self._network_faulted:
            self.note(f"network healed into {sorted(self._network_faulted)}")
            self.proxies.heal()
            self._network_faulted.clear()
        for process_name, name in sorted(self._failpoints):
            process = next(p for p in self.cluster.processes() if p.name == process_name)
            self.failpoint(process, name, "off")
        for process in list(self._killed.values()):
            self.restart(process)

    def wait_storage_serving(self, timeout_s: float = RESTART_TIMEOUT_S) -> None:
        for node in self.cluster.storage_nodes:
            wait_until(node.is_running, timeout_s, what=f"{node.name} running")
