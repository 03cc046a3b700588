"""The writer through the engine's Python API on real storage nodes (issue 3 must-holds 1 and 4)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from borealis.errors import SerializationFailure, sqlstate_of
from borealis.ids import VolumeId
from compute_node.engine import Engine
from compute_node.volume.config import VolumeConfig
from compute_node.volume.volume import Volume
from deploy.local import LocalCluster, configure_transport_from, pid_alive
from deploy.ports import PortAllocator
from storage_node.segment import Member

pytestmark = pytest.mark.integration

VOLUME = VolumeId(1)
CLI_TIMEOUT_S = 120.0
ROWS = 100_000
ROWS_PER_TRANSACTION = 10_000
ACCOUNTS = 50
BALANCE = 1_000


def _members(document: dict) -> list[Member]:  # type: ignore[type-arg]
    return [Member(n["name"], n["address"], n["az"]) for n in document["storage_nodes"]]


@pytest.mark.slow
def test_rows_survive_borealis_down_and_up(tmp_path: Path, port_allocator: PortAllocator) -> None:
    borealis = Path(sys.executable).with_name("borealis")
    data_dir = tmp_path / "cluster"
    base_port = port_allocator.allocate()
    for _ in range(16):
        port_allocator.allocate()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(borealis), *args, "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def pids() -> list[int]:
        if not (data_dir / "cluster.json").exists():
            return []
        document = json.loads((data_dir / "cluster.json").read_text())
        return [
            document["control_plane"].get("pid"),
            *(n["pid"] for n in document["storage_nodes"]),
        ]

    # This test is the writer (through the engine's Python API), so the cluster runs
    # only its storage tier.
    config = VolumeConfig(pages_per_pg=256)
    try:
        cli("up", "--no-writer", "--base-port", str(base_port))
        document = json.loads((data_dir / "cluster.json").read_text())
        # This process is the writer: it talks to the nodes with the cluster's credentials.
        configure_transport_from(document)
        members = _members(document)

        async def write() -> None:
            volume = await Volume.create(VOLUME, members, config)
            engine = await Engine.open(volume, volume.wait_durable)
            session = engine.session()
            try:
                await session.execute(
                    "CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT NOT NULL, n INTEGER)"
                )
                await session.execute("CREATE INDEX item_name ON item (name)")
                for start in range(0, ROWS, ROWS_PER_TRANSACTION):
                    await session.execute("BEGIN IMMEDIATE")
                    await session.executemany(
                        "INSERT INTO item VALUES (?, ?, ?)",
                        [
                            (i, f"name {i:06d}", i % 97)
                            for i in range(start, start + ROWS_PER_TRANSACTION)
                        ],
                    )
                    await session.execute("COMMIT")  # returns once durable at 4/6
                result = await session.execute("SELECT count(*), sum(n) FROM item")
                assert result.rows == [(ROWS, sum(i % 97 for i in range(ROWS)))]
            finally:
                await session.close()
                await engine.close()
                await volume.close()

        asyncio.run(write())
        cli("down")
        assert not any(pid_alive(pid) for pid in pids())
        cli("up", "--no-writer")

        async def read() -> None:
            volume = await Volume.open(VOLUME, members, config)
            engine = await Engine.open(volume, volume.wait_durable)
            session = engine.session()
            try:
                result = await session.execute("SELECT count(*), sum(n), max(id) FROM item")
                assert result.rows == [(ROWS, sum(i % 97 for i in range(ROWS)), ROWS - 1)]
                named = await session.execute(
                    "SELECT id FROM item WHERE name = ?", ("name 054321",)
                )
                assert named.rows == [(54321,)]
                assert (await session.execute("PRAGMA integrity_check")).rows == [("ok",)]
            finally:
                await session.close()
                await engine.close()
                await volume.close()

        asyncio.run(read())
    finally:
        if any(pid_alive(pid) for pid in pids()):
            subprocess.run(
                [str(borealis), "down", "--data-dir", str(data_dir)],
                timeout=CLI_TIMEOUT_S,
                check=False,
            )
        for pid in pids():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_bank_keeps_its_total_and_a_stale_write_is_a_serialization_failure(
    storage_cluster: LocalCluster,
) -> None:
    async def scenario() -> None:
        members = [Member(n.name, n.address, n.az) for n in storage_cluster.storage_nodes]
        volume = await Volume.create(VOLUME, members, VolumeConfig(pages_per_pg=16))
        engine = await Engine.open(volume, volume.wait_durable)
        setup = engine.session()
        await setup.execute(
            "CREATE TABLE account (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)"
        )
        await setup.execute("BEGIN IMMEDIATE")
        await setup.executemany(
            "INSERT INTO account VALUES (?, ?)", [(i, BALANCE) for i in range(ACCOUNTS)]
        )
        await setup.execute("COMMIT")
        transfers_done = 0
        totals_seen: list[int] = []
        rng = random.Random(7)

        async def transfers(count: int) -> None:
            nonlocal transfers_done
            session = engine.session()
            for _ in range(count):
                source, target = rng.sample(range(ACCOUNTS), 2)
                amount = rng.randint(1, 50)
                while True:
                    try:
                        await session.execute("BEGIN")
                        rows = (
                            await session.execute(
                                "SELECT balance FROM account WHERE id = ?", (source,)
                            )
                        ).rows
                        if rows[0][0] >= amount:
                            await session.execute(
                                "UPDATE account SET balance = balance - ? WHERE id = ?",
                                (amount, source),
                            )
                            await session.execute(
                                "UPDATE account SET balance = balance + ? WHERE id = ?",
                                (amount, target),
                            )
                        await session.execute("COMMIT")
                        break
                    except SerializationFailure:
                        await session.execute("ROLLBACK")
                transfers_done += 1
            await session.close()

        async def audit() -> None:
            session = engine.session()
            while transfers_done < 8 * 25:
                total = (await session.execute("SELECT sum(balance) FROM account")).rows[0][0]
                totals_seen.append(total)
                await asyncio.sleep(0.01)
            await session.close()

        try:
            await asyncio.gather(*(transfers(25) for _ in range(8)), audit())
            assert totals_seen and set(totals_seen) == {ACCOUNTS * BALANCE}
            final = (await setup.execute("SELECT sum(balance), min(balance) FROM account")).rows[0]
            assert final[0] == ACCOUNTS * BALANCE and final[1] >= 0

            # A transaction that read a snapshot and then writes after a newer commit fails.
            first, second = engine.session(), engine.session()
            await first.execute("BEGIN")
            await first.execute("SELECT balance FROM account WHERE id = 1")
            await second.execute("UPDATE account SET balance = balance + 1 WHERE id = 2")
            await second.execute("UPDATE account SET balance = balance - 1 WHERE id = 3")
            with pytest.raises(SerializationFailure) as raised:
                await first.execute("UPDATE account SET balance = balance - 1 WHERE id = 1")
            assert sqlstate_of(raised.value) == "40001"
            await first.execute("ROLLBACK")
            await first.close()
            await second.close()
        finally:
            await setup.close()
            await engine.close()
            await volume.close()

    asyncio.run(scenario())
