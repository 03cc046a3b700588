"""Snapshots (issue 8, must hold 2): `borealis snapshot create` names the latest
durable commit of a running cluster in its backup; a restore of it into a new
cluster holds exactly the rows committed before it, whatever the original did
after; names that exist or do not are refused with exit codes 1 and 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from borealis.cli.main import main
from control_plane.snapshots import backup_location, restore_snapshot
from deploy.local import LocalCluster
from deploy.ports import PortAllocator
from tests.conftest import FAST_STORAGE
from tests.integration.test_backup_restore import clusters, connect_to, start_cluster

pytestmark = pytest.mark.integration

__all__ = ["clusters"]


def rows(cluster: LocalCluster) -> list[tuple[int, str]]:
    with connect_to(cluster)() as connection:
        return [tuple(row) for row in connection.execute("SELECT id, v FROM t ORDER BY id")]


def test_snapshot_create_list_restore_delete(
    tmp_path: Path,
    port_allocator: PortAllocator,
    clusters: list[LocalCluster],
    capsys: pytest.CaptureFixture[str],
) -> None:
    store_url = f"file://{tmp_path / 'backup'}"
    original = start_cluster(
        tmp_path / "original",
        port_allocator,
        clusters,
        storage={"backup_store_url": store_url, "backup_cluster_id": "snap"},
    )
    data_dir = str(original.data_dir)
    with connect_to(original)() as connection:
        connection.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
        for index in range(1, 51):
            connection.execute("INSERT INTO t VALUES (%s, %s)", (index, f"row {index}"))
    expected = rows(original)
    assert len(expected) == 50

    assert main(["snapshot", "create", "before", "--data-dir", data_dir]) == 0
    created = capsys.readouterr().out
    assert "snapshot before of volume snap-1" in created, created
    with connect_to(original)() as connection:
        connection.execute("INSERT INTO t VALUES (51, 'after')")
        connection.execute("DELETE FROM t WHERE id = 1")
        connection.execute("UPDATE t SET v = 'changed' WHERE id = 2")

    assert main(["snapshot", "create", "before", "--data-dir", data_dir]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["snapshot", "create", "bad/name", "--data-dir", data_dir]) == 1
    capsys.readouterr()
    assert main(["snapshot", "list", "--json", "--data-dir", data_dir]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [each["name"] for each in listed] == ["before"]
    assert listed[0]["volume_name"] == "snap-1" and listed[0]["lsn"] > 0
    assert main(["snapshot", "list", "--data-dir", data_dir]) == 0
    assert "before" in capsys.readouterr().out

    result = restore_snapshot(
        backup_location(original.data_dir),
        "before",
        tmp_path / "restored",
        ports=port_allocator,
        storage_overrides=FAST_STORAGE,
    )
    clusters.append(result.cluster)
    assert result.plan.lsn == listed[0]["lsn"]
    result.cluster.start()
    assert rows(result.cluster) == expected
    # The restored cluster is a cluster of its own: it takes writes.
    with connect_to(result.cluster)() as connection:
        connection.execute("INSERT INTO t VALUES (100, 'restored')")
    assert rows(result.cluster)[-1] == (100, "restored")
    assert len(rows(original)) == 50  # 51 in, 1 out: the original is untouched

    missing = ["snapshot", "restore", "never", "--cluster-dir", data_dir, "--no-start"]
    assert main([*missing, "--data-dir", str(tmp_path / "r2")]) == 2
    assert "no snapshot" in capsys.readouterr().err
    assert main(["snapshot", "delete", "before", "--data-dir", data_dir]) == 0
    assert main(["snapshot", "delete", "before", "--data-dir", data_dir]) == 2
    capsys.readouterr()
    assert main(["snapshot", "list", "--json", "--data-dir", data_dir]) == 0
    assert json.loads(capsys.readouterr().out) == []
