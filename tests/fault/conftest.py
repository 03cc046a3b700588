"""Fixtures of the fault harness: fault seeds, and a cluster whose storage nodes sit
behind network-fault proxies.

Seeds: each test runs once per seed. By default a test runs with seeds 1..N (N set
by its `ci_seeds(N)` decorator, 1 if none); `BOREALIS_FAULT_SEED=S` or
`--fault-seed S` (when pytest is given tests/fault) runs every test with seed S
only, to replay a failure. The seed is printed when the injector starts.

The cluster: six storage nodes, each behind its own proxy (deploy/netfault.py),
then a writer, one reader and the router, all started by the launcher users run
(deploy/local.py). The proxies go in by giving cluster.json the proxies' addresses
before the instances start: instances reach storage, and storage nodes reach their
peers (the addresses travel in the segments' membership), through the proxies.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from deploy.local import InstanceProcess, LocalCluster
from deploy.netfault import ProxyHost
from deploy.ports import PortAllocator
from tests.conftest import FAST_STORAGE
from tests.fault.bank import Connect, connector
from tests.fault.faults import FaultInjector

SEED_VARIABLE = "BOREALIS_FAULT_SEED"
SOAK_VARIABLE = "BOREALIS_SOAK_S"
# Log lines that mean a broken invariant (a programmer's error), never an operating
# error a fault may cause: any of them fails the test.
INVARIANT_PATTERNS = (r"AssertionError", r"InternalError", r"level=critical")

T = Callable[..., Any]


def ci_seeds(count: int) -> Callable[[T], T]:
    """Marks a fault test to run with seeds 1..count by default."""

    def mark(function: T) -> T:
        function.ci_seed_count = count  # type: ignore[attr-defined]
        return function

    return mark


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fault-seed", type=int, default=None, help="replay one fault seed")


def chosen_seed(config: pytest.Config) -> int | None:
    option = config.getoption("fault_seed", default=None)
    if option is not None:
        return int(option)
    text = os.environ.get(SEED_VARIABLE, "").strip()
    return int(text) if text else None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "fault_seed" not in metafunc.fixturenames:
        return
    chosen = chosen_seed(metafunc.config)
    count = getattr(metafunc.function, "ci_seed_count", 1)
    seeds = [chosen] if chosen is not None else list(range(1, count + 1))
    metafunc.parametrize("fault_seed", seeds, ids=[f"seed{seed}" for seed in seeds])


def soak_seconds() -> float:
    """How long the soak runs (BOREALIS_SOAK_S); 0 skips it."""
    return float(os.environ.get(SOAK_VARIABLE, "0") or 0)


@dataclass
class FaultCluster:
    cluster: LocalCluster
    proxies: ProxyHost
    # Each storage node's own address; node.address is its proxy's.
    real_addresses: dict[str, str] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        return dict(json.loads((self.cluster.data_dir / "cluster.json").read_text()))

    def url(self, endpoint: str) -> str:
        """The URL of `writer`, `reader` (router endpoints) or an instance by name."""
        urls = self.document()["endpoints"]
        return str(
            urls[endpoint] if endpoint in ("writer", "reader") else urls["instances"][endpoint]
        )

    def connector(self, endpoint: str = "writer") -> Connect:
        return connector(self.url(endpoint), self.cluster.password)

    def readers(self) -> list[InstanceProcess]:
        return [each for each in self.cluster.instances if each.role == "reader"]

    def injector(self, seed: int) -> FaultInjector:
        return FaultInjector(self.cluster, seed, self.proxies, dict(self.real_addresses))

    def invariant_lines(self) -> list[str]:
        found = []
        for process in self.cluster.processes():
            try:
                text = process.log_path.read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                if any(re.search(pattern, line) for pattern in INVARIANT_PATTERNS):
                    found.append(f"{process.name}: {line[:400]}")
        return found

    def error_summary(self) -> dict[str, int]:
        """ERROR log lines per process (expected under faults; printed for the record)."""
        return {
            process.name: len(process.error_lines())
            for process in self.cluster.processes()
            if process.error_lines()
        }


def start_fault_cluster(
    data_dir: Path, ports: PortAllocator, proxies: ProxyHost, readers: int = 1
) -> FaultCluster:
    """Storage first; then proxies in front of each node; then instances and router."""
    cluster = LocalCluster(data_dir, ports=ports, storage_overrides=FAST_STORAGE)
    handle = FaultCluster(cluster, proxies)
    try:
        cluster.start()
        for node in cluster.storage_nodes:
            handle.real_addresses[node.name] = node.address
            node.address = proxies.add(node.name, node.address)
        cluster.with_writer = True
        cluster.reader_count = readers
        cluster.with_router = True
        cluster.start()
    except BaseException:
        cluster.stop(immediate=True)
        raise
    return handle


@pytest.fixture
def fault_cluster(tmp_path: Path, port_allocator: PortAllocator) -> Iterator[FaultCluster]:
    proxies = ProxyHost()
    handle: FaultCluster | None = None
    try:
        handle = start_fault_cluster(tmp_path / "cluster", port_allocator, proxies)
        yield handle
    finally:
        if handle is not None:
            handle.cluster.stop(immediate=True)
        proxies.close()
    print("ERROR log lines per process (expected under faults):", handle.error_summary())
    broken = handle.invariant_lines()
    assert not broken, "broken invariants in the node logs:\n" + "\n".join(broken[:40])
