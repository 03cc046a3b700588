"""Fixtures: a port allocator, a cluster builder, and a ready six-node storage cluster.

Every cluster lives in the test's temporary directory and is stopped (kill -9) at
teardown even when the test fails; then each node's log is scanned for unexpected
ERROR lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest

from deploy.local import LocalCluster
from deploy.ports import PortAllocator

# Short background intervals so tests see gossip, coalescing and GC quickly.
FAST_STORAGE = {
    "gossip_interval_ms": 100,
    "coalesce_interval_ms": 200,
    "gc_interval_ms": 200,
    "scrub_interval_ms": 500,
    "lmdb_map_size_bytes": 2**30,
    "peer_rpc_timeout_ms": 2000,
}


@pytest.fixture(scope="session")
def port_allocator() -> PortAllocator:
    return PortAllocator()


class ClusterBuilder:
    def __init__(self, tmp_path, ports: PortAllocator) -> None:  # type: ignore[no-untyped-def]
        self._tmp_path = tmp_path
        self._ports = ports
        self.clusters: list[LocalCluster] = []
        # Regexes of ERROR log lines a test expects (e.g. a repair that logs).
        self.allowed_errors: list[str] = []

    def __call__(
        self, storage_nodes: int = 6, env: dict[str, str] | None = None, **storage: object
    ) -> LocalCluster:
        cluster = LocalCluster(
            self._tmp_path / f"cluster{len(self.clusters)}",
            ports=self._ports,
            storage_nodes=storage_nodes,
            storage_overrides={**FAST_STORAGE, **storage},
            env=env,
        )
        self.clusters.append(cluster)
        return cluster

    def teardown(self) -> list[str]:
        unexpected = []
        for cluster in self.clusters:
            cluster.stop(immediate=True)
            for node in cluster.storage_nodes:
                for line in node.error_lines():
                    if not any(re.search(pattern, line) for pattern in self.allowed_errors):
                        unexpected.append(f"{node.name}: {line}")
        return unexpected


@pytest.fixture
def cluster_builder(
    tmp_path, port_allocator: PortAllocator
) -> Iterator[Callable[..., LocalCluster]]:  # type: ignore[no-untyped-def]
    builder = ClusterBuilder(tmp_path, port_allocator)
    try:
        yield builder
    finally:
        unexpected = builder.teardown()
    assert not unexpected, "unexpected ERROR lines in node logs:\n" + "\n".join(unexpected)


@pytest.fixture
def storage_cluster(cluster_builder: ClusterBuilder) -> LocalCluster:
    return cluster_builder().start()
