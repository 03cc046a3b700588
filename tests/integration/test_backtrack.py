"""Backtrack (issue 8, must hold 2): `borealis backtrack --to-time T` rewinds a
cluster that `borealis up` runs, in place (same directory, ports and endpoints):
exactly the transactions committed after T are gone, the ones at or before stay,
and the cluster keeps serving writes, backing up into a new lineage. It asks for
confirmation, and refuses a time in the future or before the retained history."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from borealis.cli.main import main
from deploy.local import LocalCluster, configure_transport_from, pid_alive, read_cluster_file
from deploy.ports import PortAllocator
from tests.conftest import FAST_STORAGE
from tests.integration.test_backup_restore import connect_to

pytestmark = pytest.mark.integration

PORTS_FOR_CLUSTER = 24
SETTINGS = {**FAST_STORAGE, "backup_interval_ms": 200, "backup_image_interval_s": 2.0}


def iso(time_s: float) -> str:
    return datetime.fromtimestamp(time_s, UTC).isoformat()


def pids(data_dir: Path) -> list[int]:
    if not (data_dir / "cluster.json").exists():
        return []
    document = read_cluster_file(data_dir)
    entries = [*document["storage_nodes"], *document["instances"]]
    if document.get("router"):
        entries.append(document["router"])
    return [
        pid for pid in [document["control_plane"].get("pid")] + [e["pid"] for e in entries] if pid
    ]


@pytest.fixture
def cluster_dir(tmp_path: Path, port_allocator: PortAllocator) -> Iterator[Path]:
    """A cluster `borealis up` started (backup to DIR/backup), always taken down."""
    data_dir = tmp_path / "cluster"
    base_port = port_allocator.allocate()
    for _ in range(PORTS_FOR_CLUSTER):
        port_allocator.allocate()
    seen: set[int] = set()
    argv = ["up", "--data-dir", str(data_dir), "--base-port", str(base_port)]
    for key, value in SETTINGS.items():
        argv += ["--storage-set", f"{key}={value}"]
    argv += ["--instance-set", "pages_per_pg=16"]
    try:
        assert main(argv) == 0
        configure_transport_from(read_cluster_file(data_dir))
        seen.update(pids(data_dir))
        yield data_dir
    finally:
        seen.update(pids(data_dir))
        main(["down", "--data-dir", str(data_dir)])
        for pid in seen:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def ids(data_dir: Path) -> list[int]:
    cluster = LocalCluster.from_cluster_file(data_dir)
    with connect_to(cluster)() as connection:
        return [row[0] for row in connection.execute("SELECT id FROM t ORDER BY id")]


def insert(data_dir: Path, first: int, last: int) -> None:
    cluster = LocalCluster.from_cluster_file(data_dir)
    with connect_to(cluster)() as connection:
        for index in range(first, last + 1):
            connection.execute("INSERT INTO t VALUES (%s, 'v')", (index,))


def test_backtrack_rewinds_in_place_and_keeps_serving(
    cluster_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = str(cluster_dir)
    cluster = LocalCluster.from_cluster_file(cluster_dir)
    with connect_to(cluster)() as connection:
        connection.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    insert(cluster_dir, 1, 20)
    # T: after row 20's COMMIT returned, before row 21's BEGIN (one host clock).
    target_s = time.time()
    time.sleep(0.01)  # a clock tick between T and the next commit's stamp
    insert(cluster_dir, 21, 30)
    before = read_cluster_file(cluster_dir)
    endpoints_before = before["endpoints"]
    lineage_before = before["backup"]["volume_name"]

    # No confirmation: nothing happens.
    monkeypatch.setattr("builtins.input", lambda prompt: "no")
    assert main(["backtrack", "--to-time", iso(target_s), "--data-dir", data_dir]) == 1
    assert "cancelled" in capsys.readouterr().err
    assert ids(cluster_dir) == list(range(1, 31))
    # A time in the future, and one before the retained history.
    assert (
        main(["backtrack", "--to-time", iso(time.time() + 3600), "--yes", "--data-dir", data_dir])
        == 1
    )
    assert "future" in capsys.readouterr().err
    assert (
        main(["backtrack", "--to-time", "2001-01-01T00:00:00Z", "--yes", "--data-dir", data_dir])
        == 2
    )
    assert "no commit" in capsys.readouterr().err
    assert main(["backtrack", "--to-time", "yesterday", "--yes", "--data-dir", data_dir]) == 1

    # Confirmed by the volume's name.
    monkeypatch.setattr("builtins.input", lambda prompt: lineage_before)
    started_s = time.monotonic()
    assert main(["backtrack", "--to-time", iso(target_s), "--data-dir", data_dir]) == 0
    print(f"backtrack took {time.monotonic() - started_s:.1f} s")
    assert "rewound to LSN" in capsys.readouterr().out
    after = read_cluster_file(cluster_dir)
    assert after["endpoints"] == endpoints_before
    assert after["backup"]["volume_name"] != lineage_before
    assert ids(cluster_dir) == list(range(1, 21))
    # The rewound cluster takes writes, including the ids that were rewound away.
    insert(cluster_dir, 21, 25)
    assert ids(cluster_dir) == list(range(1, 26))
