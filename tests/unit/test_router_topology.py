"""Endpoint membership and balancing, sans-IO."""

from __future__ import annotations

from typing import Any

import pytest

from router.proxy import parse_lag_ms
from router.topology import (
    Balancer,
    InstanceHealth,
    TopologyError,
    parse_cluster,
)

pytestmark = pytest.mark.unit


def _instance(name: str, role: str, port: int, state: str = "running") -> dict[str, Any]:
    return {
        "name": name,
        "role": role,
        "state": state,
        "address": f"127.0.0.1:{port + 1000}",
        "endpoint": f"postgresql://borealis@127.0.0.1:{port}/borealis",
    }


def _balancer(*instances: dict[str, Any], custom: dict[str, Any] | None = None) -> Balancer:
    balancer = Balancer(reader_lag_max_ms=100)
    document = {"instances": list(instances), "custom_endpoints": custom or {}}
    balancer.topology = parse_cluster(document)
    for name in balancer.topology.instances:
        balancer.health[name] = InstanceHealth(healthy=True)
    return balancer


def test_parse_cluster_reads_instances_and_custom_endpoints() -> None:
    topology = parse_cluster(
        {
            "instances": [_instance("w1", "writer", 5001)],
            "custom_endpoints": {"olap": {"port": 7000, "instances": ["w1"]}},
        }
    )
    assert topology.instances["w1"].pg_port == 5001
    assert topology.instances["w1"].address == "127.0.0.1:6001"
    assert topology.custom_endpoints == {"olap": (7000, ("w1",))}
    assert topology.is_gone("r9")
    assert not topology.is_gone("w1")


def test_parse_cluster_refuses_malformed_entries() -> None:
    with pytest.raises(TopologyError):
        parse_cluster({"instances": [{"name": "w1"}]})
    with pytest.raises(TopologyError):
        parse_cluster({"custom_endpoints": {"x": {"port": "no"}}})


def test_writer_endpoint_takes_the_running_healthy_writer() -> None:
    balancer = _balancer(_instance("w1", "writer", 1), _instance("r1", "reader", 2))
    assert balancer.eligible("writer") == ["w1"]
    balancer.health["w1"].healthy = False
    assert balancer.eligible("writer") == []


def test_reader_endpoint_falls_back_to_the_writer() -> None:
    balancer = _balancer(_instance("w1", "writer", 1), _instance("r1", "reader", 2))
    assert balancer.eligible("reader") == ["r1"]
    balancer.health["r1"].lag_ms = 101
    assert balancer.eligible("reader") == ["w1"]
    balancer.health["r1"].lag_ms = 100
    assert balancer.eligible("reader") == ["r1"]


def test_draining_instances_take_no_new_connections() -> None:
    balancer = _balancer(
        _instance("w1", "writer", 1),
        _instance("r1", "reader", 2, state="draining"),
        _instance("r2", "reader", 3),
    )
    assert balancer.eligible("reader") == ["r2"]
    balancer.drained.add("r2")
    assert balancer.eligible("reader") == ["w1"]


def test_least_connections_then_round_robin() -> None:
    balancer = _balancer(
        _instance("w1", "writer", 1), _instance("r1", "reader", 2), _instance("r2", "reader", 3)
    )
    assert balancer.choose("reader", {"r1": 3, "r2": 1}) == "r2"
    chosen = {balancer.choose("reader", {}) for _ in range(4)}
    assert chosen == {"r1", "r2"}
    assert balancer.choose("reader", {}, exclude=["r1", "r2"]) is None


def test_custom_endpoint_routes_to_its_healthy_instances() -> None:
    balancer = _balancer(
        _instance("w1", "writer", 1),
        _instance("r1", "reader", 2),
        custom={"mix": {"port": 9, "instances": ["r1", "w1"]}},
    )
    assert balancer.eligible("custom:mix") == ["r1", "w1"]
    balancer.health["r1"].healthy = False
    assert balancer.eligible("custom:mix") == ["w1"]
    assert balancer.eligible("custom:other") == []
    assert balancer.endpoints() == ["writer", "reader", "custom:mix"]


def test_lag_is_read_from_the_metrics_text() -> None:
    text = (
        "# HELP borealis_instance_replica_lag_ms lag\n"
        "# TYPE borealis_instance_replica_lag_ms gauge\n"
        "borealis_instance_replica_lag_ms 12.5\n"
        "borealis_instance_replica_lag_lsns 3\n"
    )
    assert parse_lag_ms(text) == 12.5
    assert parse_lag_ms('borealis_instance_replica_lag_ms{writer="w1"} 7\n') == 7
    assert parse_lag_ms("borealis_instance_other 1\n") == 0.0
