"""Must hold 3 (storage half): with encryption on, no file a cluster keeps at rest
holds a row's plaintext; a corrupted ciphertext is detected and repaired from a peer;
a storage node that cannot get its data key refuses to start and serves nothing.
And the AWS-KMS-compatible client against moto's server.

The scan reads every file under the cluster's data directory except the node logs
(`*.log`: a log line may quote a statement) and the config and cluster files
(`*.toml`, `*.json`: settings, wrapped keys, no rows): every LMDB data.mdb and
lock.mdb, the writer's own files, the key and credential files.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import lmdb
import psycopg
import pytest

from borealis import metrics
from borealis.errors import Corruption, KeyUnavailable
from borealis.ids import Epochs, PgIndex, SegmentId, VolumeId
from borealis.kms import AwsKms, create_master_key_file, kms_from_url
from borealis.wait import wait_until
from deploy.local import MASTER_KEY_FILE, LocalCluster, StorageNodeProcess
from deploy.ports import PortAllocator
from storage_node.__main__ import EXIT_NO_DATA_KEY
from storage_node.client import StorageClient
from storage_node.store import LOG_KEY, VERSION_KEY
from tests.conftest import FAST_STORAGE
from tests.support import storage as storage_support
from tests.support.moto_server import moto_server
from tests.support.redo_model import RedoModel

pytestmark = pytest.mark.integration

# Every delta is coalesced at once, so page images (not only log records) hold the row;
# the scrubber runs only when asked, so a test sees the corruption before the repair.
STORAGE = {**FAST_STORAGE, "coalesce_deltas_max": 1, "scrub_interval_ms": 3_600_000}
CONNECT_TIMEOUT_S = 10
SETTLE_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 20.0
CLI_TIMEOUT_S = 60.0
VICTIM = "s3"
SCAN_SKIPPED_SUFFIXES = (".log", ".toml", ".json")
# What the tests here make the nodes log on purpose.
EXPECTED_ERRORS = ("failed authentication", "cannot use the data keys", "Corruption", "DATA_LOSS")
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def clusters(tmp_path: Path, port_allocator: PortAllocator) -> Iterator[list[LocalCluster]]:
    """Clusters a test starts (append them); each stopped at teardown, their storage
    nodes' logs then checked for ERROR lines the test did not cause on purpose."""
    started: list[LocalCluster] = []
    try:
        yield started
    finally:
        for cluster in started:
            cluster.stop(immediate=True)
    unexpected = [
        f"{node.name}: {line}"
        for cluster in started
        for node in cluster.storage_nodes
        for line in node.error_lines()
        if not any(expected in line for expected in EXPECTED_ERRORS)
    ]
    assert not unexpected, "unexpected ERROR lines:\n" + "\n".join(unexpected)


def writer_cluster(
    tmp_path: Path, ports: PortAllocator, clusters: list[LocalCluster], **options: Any
) -> LocalCluster:
    cluster = LocalCluster(
        tmp_path / f"cluster{len(clusters)}",
        ports=ports,
        writer=True,
        storage_overrides=STORAGE,
        **options,
    )
    clusters.append(cluster)
    return cluster.start()


def read_cluster_document(cluster: LocalCluster) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((cluster.data_dir / "cluster.json").read_text())
    return document


def insert_marker(cluster: LocalCluster) -> str:
    """Inserts a row holding a fresh random marker; returns the marker once committed."""
    marker = secrets.token_hex(16)
    with psycopg.connect(
        cluster.writer().url(),
        password=cluster.password,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_S,
    ) as connection:
        connection.execute("CREATE TABLE secrets (id integer PRIMARY KEY, note text)")
        connection.execute("INSERT INTO secrets VALUES (1, %s)", (marker,))
    return marker


def read_marker(cluster: LocalCluster) -> str:
    with psycopg.connect(
        cluster.writer().url(),
        password=cluster.password,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_S,
    ) as connection:
        row = connection.execute("SELECT note FROM secrets WHERE id = 1").fetchone()
    assert row is not None
    return str(row[0])


async def settled_async(cluster: LocalCluster) -> bool:
    """True once every node holds every record of its segments (SCL at the PG's highest
    LSN) and has coalesced at least one page image."""
    highest: dict[int, int] = {}
    states: list[tuple[int, int]] = []
    for node in cluster.storage_nodes:
        async with StorageClient(node.address, 5.0) as client:
            await client.run_task("gossip")
            await client.run_task("coalesce")
            samples = metrics.parse(await client.metrics())
            if samples.get("borealis_storage_coalesced_images_total", 0) < 1:
                return False
            for meta in await client.list_segments():
                highest[meta.pg] = max(highest.get(meta.pg, 0), meta.highest_lsn)
                states.append((meta.pg, meta.scl))
    return bool(states) and all(scl == highest[pg] for pg, scl in states)


def wait_settled(cluster: LocalCluster) -> None:
    wait_until(
        lambda: asyncio.run(settled_async(cluster)),
        SETTLE_TIMEOUT_S,
        interval_s=0.2,
        what="every segment complete and coalesced",
    )


def files_holding(data_dir: Path, marker: bytes) -> list[Path]:
    """The files under `data_dir` (but logs, config and cluster files) holding `marker`."""
    found = []
    scanned = 0
    for path in sorted(data_dir.rglob("*")):
        if not path.is_file() or path.name.endswith(SCAN_SKIPPED_SUFFIXES):
            continue
        scanned += 1
        if marker in path.read_bytes():
            found.append(path)
    lmdb_files = list(data_dir.glob("s*/segments/data.mdb"))
    assert scanned and len(lmdb_files) == 6, "the scan must cover every storage node's LMDB"
    return found


@pytest.mark.parametrize("encryption", [True, False], ids=["encrypted", "plain"])
def test_no_file_at_rest_holds_a_row_in_the_clear(
    tmp_path: Path,
    port_allocator: PortAllocator,
    clusters: list[LocalCluster],
    encryption: bool,
) -> None:
    cluster = writer_cluster(tmp_path, port_allocator, clusters, encryption=encryption)
    document = read_cluster_document(cluster)
    if encryption:
        master_key = cluster.data_dir / MASTER_KEY_FILE
        assert master_key.stat().st_mode & 0o777 == 0o600
        assert document["encryption"]["kms"] == f"local://{master_key}"
        assert set(document["encryption"]["data_keys"]) == {"1", "*"}
    else:
        assert document["encryption"] is None
        assert not (cluster.data_dir / MASTER_KEY_FILE).exists()

    marker = insert_marker(cluster)
    wait_settled(cluster)
    cluster.stop()
    holding = files_holding(cluster.data_dir, marker.encode())
    if encryption:
        assert holding == [], f"the marker is in the clear in {holding}"
    else:
        # The same scan finds it in every replica when nothing is sealed: the scan works.
        lmdb_holding = [path for path in holding if path.name == "data.mdb"]
        assert len(lmdb_holding) == 6, holding


# -- a corrupted ciphertext ------------------------------------------------------------


def newest_image_and_record(directory: Path) -> tuple[bytes, bytes]:
    """Keys of the newest materialised image whose page has no newer version, and of
    the newest log record, in a stopped node's LMDB."""
    env = lmdb.open(str(directory / "segments"), max_dbs=4, map_size=2**30, readonly=True)
    try:
        versions, log = env.open_db(b"versions", create=False), env.open_db(b"log", create=False)
        with env.begin() as txn:
            newest: dict[bytes, tuple[bytes, bytes]] = {}
            for key, value in txn.cursor(versions):
                newest[bytes(key[:-8])] = (bytes(key), bytes(value[:1]))
            images = [key for key, tag in newest.values() if tag == b"M"]
            records = [bytes(key) for key in txn.cursor(log).iternext(values=False)]
    finally:
        env.close()
    assert images and records, "the node holds no image or no record"
    image = max(images, key=lambda key: VERSION_KEY.unpack(key)[3])
    record = max(records, key=lambda key: LOG_KEY.unpack(key)[2])
    return image, record


def flip_bit(directory: Path, db_name: bytes, key: bytes, offset: int) -> None:
    env = lmdb.open(str(directory / "segments"), max_dbs=4, map_size=2**30)
    try:
        db = env.open_db(db_name, create=False)
        with env.begin(write=True) as txn:
            value = bytearray(txn.get(key, db=db))
            value[offset] ^= 0x20
            txn.put(key, bytes(value), db=db)
    finally:
        env.close()


async def page_from_every_node(
    cluster: LocalCluster, segment_id: SegmentId, page: int, lsn: int
) -> dict[str, bytes | Corruption]:
    """Each node's answer to GetPage(page) at one read point at or above `lsn`: the
    highest PGMRPL (reads below it are refused), so the read starts at the same
    newest version of the page everywhere, the one at `lsn` when nothing came later."""
    clients = {node.name: StorageClient(node.address, 5.0) for node in cluster.storage_nodes}
    try:
        states = {name: await client.state(segment_id) for name, client in clients.items()}
        read_point = max([lsn, *(meta.pgmrpl for meta in states.values())])
        answers: dict[str, bytes | Corruption] = {}
        for name, client in clients.items():
            epochs = Epochs(states[name].volume_epoch, states[name].membership_epoch)  # type: ignore[arg-type]
            try:
                image, _ = await client.get_page(segment_id, epochs, page, read_point)
                answers[name] = image
            except Corruption as error:
                answers[name] = error
        return answers
    finally:
        for client in clients.values():
            await client.close()


async def storage_counter(node: StorageNodeProcess, name: str) -> float:
    async with StorageClient(node.address, 5.0) as client:
        return metrics.parse(await client.metrics()).get(f"borealis_storage_{name}", 0)


async def scrub(node: StorageNodeProcess) -> str:
    async with StorageClient(node.address, 10.0) as client:
        return await client.run_task("scrub")


def test_a_corrupted_ciphertext_is_detected_and_repaired_from_a_peer(
    tmp_path: Path, port_allocator: PortAllocator, clusters: list[LocalCluster]
) -> None:
    cluster = writer_cluster(tmp_path, port_allocator, clusters)
    marker = insert_marker(cluster)
    wait_settled(cluster)
    victim = cluster.node(VICTIM)
    victim.stop()
    image_key, record_key = newest_image_and_record(victim.directory)
    # Inside the ciphertexts (after the tag byte and the nonce): what a bad disk does.
    flip_bit(victim.directory, b"versions", image_key, 1 + 12 + 1000)
    flip_bit(victim.directory, b"log", record_key, 12 + 10)
    victim.start()

    volume, pg, page, lsn = VERSION_KEY.unpack(image_key)
    segment_id = SegmentId(VolumeId(volume), PgIndex(pg))
    answers = asyncio.run(page_from_every_node(cluster, segment_id, page, lsn))
    assert isinstance(answers.pop(VICTIM), Corruption), "the flipped image was served"
    good = set(answers.values())
    assert len(good) == 1 and all(isinstance(image, bytes) for image in good), answers

    # The refused read woke the scrubber; asking for a pass as well does no harm.
    asyncio.run(scrub(victim))
    wait_until(
        lambda: asyncio.run(storage_counter(victim, "scrub_repairs_total")) == 2,
        SETTLE_TIMEOUT_S,
        what="the scrubber to repair both copies",
    )
    # Counted: the refused read, then the scrubber's two finds.
    assert asyncio.run(storage_counter(victim, "crc_failures_total")) >= 3
    repaired = asyncio.run(page_from_every_node(cluster, segment_id, page, lsn))
    assert repaired[VICTIM] in good
    assert asyncio.run(scrub(victim)) == ""
    assert read_marker(cluster) == marker


# -- a node without its key ---------------------------------------------------------------


def start_refused(node: StorageNodeProcess) -> str:
    """Starts `node`, expecting it to exit with EXIT_NO_DATA_KEY before serving; returns
    what it logged."""
    before = node.log_path.read_text() if node.log_path.exists() else ""
    node.start(wait=False)
    process = node.process
    assert process is not None
    wait_until(lambda: process.poll() is not None, EXIT_TIMEOUT_S, what=f"{node.name} to exit")
    assert process.returncode == EXIT_NO_DATA_KEY
    node.stop()
    logged = node.log_path.read_text()[len(before) :]
    assert "storage node serving" not in logged
    assert "cannot use the data keys; not starting" in logged
    return logged


def test_a_node_without_its_key_refuses_to_start(
    tmp_path: Path, port_allocator: PortAllocator, clusters: list[LocalCluster]
) -> None:
    cluster = writer_cluster(tmp_path, port_allocator, clusters)
    marker = insert_marker(cluster)
    victim = cluster.node(VICTIM)
    victim.stop()
    master_key = cluster.data_dir / MASTER_KEY_FILE
    kept = master_key.with_name("master.key.kept")
    shutil.move(master_key, kept)

    logged = start_refused(victim)
    assert "cannot read the master key file" in logged and str(master_key) in logged
    host, port = victim.address.rsplit(":", 1)
    with socket.socket() as probe:
        assert probe.connect_ex((host, int(port))) != 0, "something listens on the node's port"

    create_master_key_file(master_key)  # another master key: the wrapped key does not open
    assert "does not open under the master key" in start_refused(victim)

    os.replace(kept, master_key)
    victim.start()
    assert read_marker(cluster) == marker


# -- the AWS-KMS-compatible client ---------------------------------------------------------


@pytest.fixture
def moto_endpoint(port_allocator: PortAllocator, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    with moto_server(port_allocator.allocate()) as endpoint:
        yield endpoint


def create_kms_key(endpoint: str) -> str:
    client = boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1")
    return str(client.create_key(Description="borealis test")["KeyMetadata"]["KeyId"])


def test_aws_kms_wraps_and_unwraps_data_keys(
    moto_endpoint: str, port_allocator: PortAllocator
) -> None:
    key_id = create_kms_key(moto_endpoint)
    kms = kms_from_url(f"aws-kms://{key_id}?endpoint={moto_endpoint}&region=us-east-1")
    assert isinstance(kms, AwsKms)
    data_key, wrapped = kms.generate_data_key()
    assert len(data_key) == 32 and data_key not in wrapped
    assert kms.decrypt(wrapped) == data_key
    with pytest.raises(KeyUnavailable, match="KMS Decrypt failed"):
        kms.decrypt(b"\x01" * 64)
    with pytest.raises(KeyUnavailable, match="GenerateDataKey failed"):
        AwsKms("no-such-key", moto_endpoint, "us-east-1").generate_data_key()
    unreachable = f"http://127.0.0.1:{port_allocator.allocate()}"
    with pytest.raises(KeyUnavailable, match="KMS Decrypt failed"):
        AwsKms(key_id, unreachable, "us-east-1").decrypt(wrapped)


def test_storage_nodes_unwrap_their_keys_through_aws_kms(
    tmp_path: Path,
    port_allocator: PortAllocator,
    clusters: list[LocalCluster],
    moto_endpoint: str,
) -> None:
    key_id = create_kms_key(moto_endpoint)
    kms_url = f"aws-kms://{key_id}?endpoint={moto_endpoint}&region=us-east-1"
    cluster = LocalCluster(
        tmp_path / "aws",
        ports=port_allocator,
        storage_nodes=6,
        storage_overrides=FAST_STORAGE,
        env=AWS_ENV,
        kms_url=kms_url,
    )
    clusters.append(cluster)
    cluster.start()
    assert read_cluster_document(cluster)["encryption"]["kms"] == kms_url
    assert not (cluster.data_dir / MASTER_KEY_FILE).exists()

    model = RedoModel(first_page=0, page_count=8, seed=5)
    records = model.records(20)

    async def write_and_read() -> list[bytes]:
        all_clients = storage_support.clients(cluster)
        try:
            await storage_support.create_segment(all_clients, cluster, 0, 0, 8)
            await storage_support.append_all(all_clients, 0, records)
            read, _, _ = await all_clients[0].read_records(
                storage_support.segment_id(0), storage_support.EPOCHS, 0, 2**63
            )
            return list(read)
        finally:
            await storage_support.close_all(all_clients)

    assert asyncio.run(write_and_read()) == records
    # A node restarted while the KMS is unreachable cannot unwrap its key.
    victim = cluster.node(VICTIM)
    victim.stop()
    unreachable = f"http://127.0.0.1:{port_allocator.allocate()}"
    config_path = victim.directory / "storage_node.toml"
    config_path.write_text(config_path.read_text().replace(moto_endpoint, unreachable))
    logged = start_refused(victim)
    assert re.search(r"KMS Decrypt failed", logged), logged


# -- borealis up ---------------------------------------------------------------------------


def run_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    borealis = Path(sys.executable).with_name("borealis")
    return subprocess.run(
        [str(borealis), *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def up_and_down(data_dir: Path, base_port: int, *options: str) -> dict[str, Any]:
    """`borealis up --no-writer OPTIONS` (three storage nodes: no volume needs six here),
    then `down`; returns cluster.json while up."""
    try:
        up = run_cli(
            data_dir,
            "up",
            "--no-writer",
            "--storage-nodes",
            "3",
            "--base-port",
            str(base_port),
            *options,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        document: dict[str, Any] = json.loads((data_dir / "cluster.json").read_text())
        assert [node["state"] for node in document["storage_nodes"]] == ["running"] * 3
        return document
    finally:
        down = run_cli(data_dir, "down")
        assert down.returncode == 0, down.stdout + down.stderr


@pytest.mark.slow
def test_up_encrypts_by_default_once_and_no_encryption_opts_out(
    tmp_path: Path, port_allocator: PortAllocator
) -> None:
    # Blocks of free ports: the control plane takes the base, nodes the ones after.
    base_ports = []
    for _ in range(2):
        base_ports.append(port_allocator.allocate())
        for _ in range(16):
            port_allocator.allocate()

    plain = up_and_down(tmp_path / "plain", base_ports[0], "--no-encryption")
    assert plain["encryption"] is None
    assert not (tmp_path / "plain" / MASTER_KEY_FILE).exists()
    assert 'kms_url = ""' in (tmp_path / "plain" / "s1" / "storage_node.toml").read_text()

    encrypted_dir = tmp_path / "encrypted"
    first = up_and_down(encrypted_dir, base_ports[1])
    assert first["encryption"]["kms"] == f"local://{encrypted_dir / MASTER_KEY_FILE}"
    assert (encrypted_dir / MASTER_KEY_FILE).stat().st_mode & 0o777 == 0o600
    master_key = (encrypted_dir / MASTER_KEY_FILE).read_bytes()
    # Reopened: the same master key and the same wrapped data keys.
    again = up_and_down(encrypted_dir, base_ports[1])
    assert again["encryption"] == first["encryption"]
    assert (encrypted_dir / MASTER_KEY_FILE).read_bytes() == master_key
