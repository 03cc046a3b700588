"""`borealis up / status / down` with the control plane supervising real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from borealis.ids import Epoch, Epochs, PgIndex, SegmentId, VolumeId
from borealis.wait import wait_until
from deploy.local import configure_transport_from, pid_alive
from deploy.ports import PortAllocator
from storage_node.client import StorageClient
from storage_node.segment import Member
from tests.support.storage import run

pytestmark = pytest.mark.integration

CLI_TIMEOUT_S = 120.0
SEGMENT = SegmentId(VolumeId(3), PgIndex(0))
EPOCHS = Epochs(Epoch(1), Epoch(1))


def _document(data_dir: Path) -> dict[str, Any]:
    return json.loads((data_dir / "cluster.json").read_text())


def _pids(data_dir: Path) -> list[int]:
    if not (data_dir / "cluster.json").exists():
        return []
    document = _document(data_dir)
    pids = [process["pid"] for process in [*document["storage_nodes"], *document["instances"]]]
    return [pid for pid in [document["control_plane"].get("pid"), *pids] if pid]


def test_up_status_down_supervise_and_reopen(tmp_path: Path, port_allocator: PortAllocator) -> None:
    borealis = Path(sys.executable).with_name("borealis")
    data_dir = tmp_path / "cluster"
    # A block of free ports: the control plane takes the base, nodes the ones after.
    base_port = port_allocator.allocate()
    for _ in range(16):
        port_allocator.allocate()

    def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(borealis), *args, "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            cwd=tmp_path,
            check=False,
            env={**os.environ, **(env or {})},
        )

    seen_pids: set[int] = set()
    try:
        up = cli(
            "up", "--base-port", str(base_port), "--storage-set", "lmdb_map_size_bytes=1073741824"
        )
        assert up.returncode == 0, up.stdout + up.stderr
        document = _document(data_dir)
        # This process talks to the nodes too: with the cluster's credentials.
        configure_transport_from(document)
        seen_pids.update(_pids(data_dir))
        assert document["control_plane"]["port"] == base_port
        assert [node["state"] for node in document["storage_nodes"]] == ["running"] * 6
        assert (
            sorted(node["az"] for node in document["storage_nodes"])
            == ["az-a"] * 2 + ["az-b"] * 2 + ["az-c"] * 2
        )
        assert [(i["name"], i["role"], i["state"]) for i in document["instances"]] == [
            ("w1", "writer", "running")
        ]
        writer_url = document["endpoints"]["writer"]
        assert writer_url.startswith("postgresql://borealis@127.0.0.1:")
        assert ":" not in writer_url.split("//", 1)[1].split("@", 1)[0], "no password in the URL"
        # The writer and reader endpoints are the router's; each instance has its own.
        assert f":{document['router']['writer_port']}/" in writer_url
        assert f":{document['router']['reader_port']}/" in document["endpoints"]["reader"]
        assert set(document["endpoints"]["instances"]) == {"w1"}
        password_file = Path(document["password_file"])
        assert password_file.stat().st_mode & 0o777 == 0o600
        assert (data_dir / "users.json").stat().st_mode & 0o777 == 0o600
        assert password_file.read_text().strip() not in (data_dir / "users.json").read_text()
        # up tells how to connect, with psql and the bundled client.
        assert f"psql {writer_url}" in up.stdout and "borealis sql" in up.stdout
        made = cli("sql", "-c", "CREATE TABLE kept (id int PRIMARY KEY, note text)")
        assert made.returncode == 0, made.stdout + made.stderr
        filled = cli("sql", "-c", "INSERT INTO kept VALUES (1, 'survives down and up')")
        assert filled.returncode == 0, filled.stdout + filled.stderr

        status = cli("status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        assert [node["health"] for node in json.loads(status.stdout)["storage_nodes"]] == [
            "SERVING"
        ] * 6

        # Readers and custom endpoints through the control plane's API.
        added = cli("add-reader", "--tier", "0")
        assert added.returncode == 0, added.stdout + added.stderr
        assert "reader r1 serving" in added.stdout
        assert [(i["name"], i["role"], i["tier"]) for i in _document(data_dir)["instances"]] == [
            ("w1", "writer", 1),
            ("r1", "reader", 0),
        ]
        created = cli("endpoint", "create", "analytics", "--instances", "r1")
        assert created.returncode == 0, created.stdout + created.stderr
        custom_url = _document(data_dir)["endpoints"]["custom"]["analytics"]
        assert custom_url in created.stdout
        on_reader = cli(
            "sql",
            "--dsn",
            custom_url,
            "-c",
            "SELECT pg_is_in_recovery()",
            env={"PGPASSWORD": password_file.read_text().strip()},
        )
        assert on_reader.returncode == 0, on_reader.stdout + on_reader.stderr
        assert " t\n" in on_reader.stdout or " 1\n" in on_reader.stdout, on_reader.stdout
        shown = cli("status")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        (r1_line,) = [line for line in shown.stdout.splitlines() if line.startswith("r1 ")]
        assert r1_line.split()[1:3] == ["reader", "0"], r1_line
        refused = cli("remove-reader", "w1")
        assert refused.returncode == 1 and "only a reader" in refused.stderr
        removed = cli("remove-reader", "r1")
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert [i["name"] for i in _document(data_dir)["instances"]] == ["w1"]
        assert _document(data_dir)["custom_endpoints"]["analytics"]["instances"] == []

        # A second up on a running directory changes nothing.
        again = cli("up", "--base-port", str(base_port))
        assert again.returncode == 0 and "already running" in again.stdout
        assert (
            _pids(data_dir) == _pids(data_dir)
            and _document(data_dir)["control_plane"] == document["control_plane"]
        )

        members = [Member(n["name"], n["address"], n["az"]) for n in document["storage_nodes"]]

        async def create() -> None:
            for node in document["storage_nodes"]:
                async with StorageClient(node["address"]) as client:
                    await client.set_membership(SEGMENT, EPOCHS, 0, 8, members)

        run(create)

        # The supervisor restarts a node killed with kill -9.
        victim = document["storage_nodes"][2]
        os.kill(victim["pid"], signal.SIGKILL)

        def restarted() -> bool:
            node = _document(data_dir)["storage_nodes"][2]
            return (
                node["state"] == "running"
                and node["pid"] != victim["pid"]
                and pid_alive(node["pid"])
            )

        wait_until(restarted, 30.0, what="the supervisor to restart s3")
        seen_pids.update(_pids(data_dir))

        # ... and the writer, which reopens the volume (recovery fences the old epoch).
        writer = _document(data_dir)["instances"][0]
        os.kill(writer["pid"], signal.SIGKILL)

        def writer_back() -> bool:
            instance = _document(data_dir)["instances"][0]
            return instance["state"] == "running" and instance["pid"] != writer["pid"]

        wait_until(writer_back, 60.0, what="the supervisor to restart the writer")
        seen_pids.update(_pids(data_dir))

        down = cli("down")
        assert down.returncode == 0, down.stdout + down.stderr
        wait_until(
            lambda: not any(pid_alive(pid) for pid in seen_pids), 15.0, what="every process to stop"
        )
        assert [node["state"] for node in _document(data_dir)["storage_nodes"]] == ["stopped"] * 6

        # up on the same directory reopens the same nodes, ports and segments.
        reopened = cli("up")
        assert reopened.returncode == 0, reopened.stdout + reopened.stderr
        seen_pids.update(_pids(data_dir))
        assert [n["address"] for n in _document(data_dir)["storage_nodes"]] == [
            m.address for m in members
        ]

        async def segments() -> list[int]:
            counts = []
            for member in members:
                async with StorageClient(member.address) as client:
                    counts.append(len(await client.list_segments()))
            return counts

        # The test's segment and PG 0 of the writer's volume.
        assert run(segments) == [2] * 6
        # Committed rows survive down and up (issue 4, must hold 7).
        kept = cli("sql", "-c", "SELECT note FROM kept WHERE id = 1")
        assert kept.returncode == 0, kept.stdout + kept.stderr
        assert "survives down and up" in kept.stdout
        errors = [
            line
            for log in [*data_dir.glob("s*/node.log"), data_dir / "control_plane.log"]
            for line in log.read_text(errors="replace").splitlines()
            if "level=error" in line or "Traceback" in line
        ]
        assert not errors, errors
    finally:
        if any(pid_alive(pid) for pid in _pids(data_dir)):
            cli("down")
        for pid in seen_pids | set(_pids(data_dir)):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
