"""Assembles a storage node: store, writer thread, gRPC services, background tasks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from functools import partial

from borealis import rpc
from borealis.admin import AdminService
from borealis.encryption import VolumeSealers
from borealis.errors import KeyUnavailable
from borealis.kms import open_sealers
from borealis.log import get_logger
from borealis.metrics import Metrics, Sample
from borealis.serving import Serving, until_stopped
from proto import admin_pb2_grpc, storage_pb2_grpc
from storage_node.backup import Backup
from storage_node.base_images import open_segment_store
from storage_node.coalescer import Coalescer
from storage_node.config import StorageNodeConfig
from storage_node.garbage_collector import GarbageCollector
from storage_node.gossip import Gossip
from storage_node.hydration import Hydrator
from storage_node.peers import Peers
from storage_node.periodic import Periodic
from storage_node.scrubber import Scrubber
from storage_node.service import StorageService
from storage_node.writer import Writer

log = get_logger("storage_node")

SERVICE_NAMES = ["borealis.storage.Storage", "borealis.admin.Admin"]


def declare_metrics(metrics: Metrics) -> None:
    for name, kind, help_text in (
        ("records_appended_total", "counter", "Redo records persisted (new ones only)."),
        (
            "record_bytes_appended_total",
            "counter",
            "Bytes of the redo records persisted (new ones only).",
        ),
        ("fsyncs_total", "counter", "LMDB commits (each one fsync) by the writer thread."),
        ("group_commit_batches_total", "counter", "Write operations folded into those commits."),
        ("pages_read_total", "counter", "GetPage calls answered."),
        ("append_requests_total", "counter", "AppendRedo calls answered."),
        ("gossip_records_filled_total", "counter", "Records copied from peers by gossip."),
        (
            "gossip_rehydrations_total",
            "counter",
            "Segments found behind their peers' garbage collection and hydrated again.",
        ),
        ("hydration_pages_total", "counter", "Page images copied from peers by hydration."),
        ("hydrations_total", "counter", "New segments that finished hydrating from a peer."),
        ("crc_failures_total", "counter", "Stored records or images that failed their CRC32C."),
        ("scrub_repairs_total", "counter", "Corrupt copies replaced from a peer."),
        ("coalesced_images_total", "counter", "Page images written by the coalescer."),
        ("gc_records_deleted_total", "counter", "Page versions and log records garbage-collected."),
        ("invalid_requests_total", "counter", "Requests refused as malformed."),
        ("stale_epoch_requests_total", "counter", "Requests refused for stale epochs."),
        ("segment_scl", "gauge", "Segment complete LSN."),
        ("segment_highest_lsn", "gauge", "Highest LSN the segment holds."),
        ("segment_pending_records", "gauge", "Records held above the SCL (a hole below them)."),
        ("segment_records", "gauge", "Log records the segment stores."),
        ("segment_record_bytes", "gauge", "Bytes of the log records the segment stores."),
        ("lmdb_used_bytes", "gauge", "Bytes of the LMDB map in use."),
    ):
        metrics.declare(name, kind, help_text)
        # Unlabelled counters are shown from the start, so "no CRC failures" reads as
        # 0 rather than as a missing series. invalid_requests_total has an rpc label.
        if kind == "counter" and name != "invalid_requests_total":
            metrics.inc(name, 0)


class StorageNode:
    def __init__(self, config: StorageNodeConfig, sealers: VolumeSealers | None = None) -> None:
        """Opens the store; KeyUnavailable (before anything is served) if the data keys
        cannot be unwrapped or do not open the stored data."""
        self.config = config
        self.metrics = Metrics("borealis_storage")
        declare_metrics(self.metrics)
        if sealers is None:
            sealers = open_sealers(config.kms_url, config.data_keys)
        # A clone's node reads its parent's page images (storage_node/base_images.py).
        self.store = open_segment_store(
            config.data_dir, config.data_dir / "segments", config.lmdb_map_size_bytes, sealers
        )
        try:
            self.store.verify_keys()
        except KeyUnavailable:
            self.store.close()
            raise
        self.store.load()
        self.writer = Writer(self.store, config.group_commit_batches_max, self._on_commit)
        self.metrics.collector(self._segment_samples)

    def _on_commit(self, batches: int) -> None:
        self.metrics.inc("fsyncs_total")
        self.metrics.inc("group_commit_batches_total", batches)

    def _segment_samples(self) -> Iterable[Sample]:
        for segment in list(self.store.segments.values()):
            labels = {"volume": segment.id.volume_id, "pg": segment.id.pg}
            yield "segment_scl", labels, segment.scl
            yield "segment_highest_lsn", labels, segment.meta.highest_lsn
            yield "segment_pending_records", labels, segment.chain.pending()
            yield "segment_records", labels, segment.meta.records
            yield "segment_record_bytes", labels, segment.meta.record_bytes
        info = self.store.env.info()
        yield "lmdb_used_bytes", {}, (info["last_pgno"] + 1) * self.store.env.stat()["psize"]

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.writer.start(loop)
        peers = Peers(self.config.name, self.config.peer_rpc_timeout_ms / 1000)
        service = StorageService(self.config, self.store, self.writer, self.metrics)
        scrubber = Scrubber(self.config, self.store, self.writer, peers, self.metrics)
        service.scrubber = scrubber
        gossip = Gossip(self.config, self.store, service, peers, self.metrics)
        hydrator = Hydrator(self.config, self.store, self.writer, peers, gossip, self.metrics)
        backup = (
            Backup(self.config, self.store, peers, self.metrics)
            if self.config.backup_store_url
            else None
        )
        tasks = [
            Periodic("gossip", self.config.gossip_interval_ms, gossip.run_once),
            # Its own task, so one long hydration does not hold up gossip for the
            # node's other segments.
            Periodic("hydrate", self.config.gossip_interval_ms, hydrator.run_once),
            Periodic(
                "coalesce",
                self.config.coalesce_interval_ms,
                Coalescer(self.config, self.store, self.writer, self.metrics).run_once,
            ),
            Periodic(
                "gc",
                self.config.gc_interval_ms,
                GarbageCollector(
                    self.store,
                    self.writer,
                    self.metrics,
                    backup.backed_up_lsn if backup is not None else None,
                ).run_once,
            ),
            Periodic("scrub", self.config.scrub_interval_ms, scrubber.run_once),
        ]
        scrubber.periodic = tasks[-1]
        if backup is not None:
            tasks.append(Periodic("backup", self.config.backup_interval_ms, backup.run_once))
        service.on_hydrating = tasks[1].wake

        server = rpc.server(self.config.message_bytes_max)
        storage_pb2_grpc.add_StorageServicer_to_server(service, server)
        admin_tasks = {task.name: task.run_now for task in tasks}
        # An operator asking for gossip wants every missing record now, not only
        # those missing for a whole interval.
        admin_tasks["gossip"] = partial(tasks[0].run_now, gossip.run_eager)
        admin = AdminService(self.metrics, admin_tasks)
        admin_pb2_grpc.add_AdminServicer_to_server(admin, server)
        config = self.config
        serving = await Serving.start(
            server,
            SERVICE_NAMES,
            config.host,
            config.port,
            config.data_dir,
            self.metrics,
            config.metrics_port,
        )
        log.info(
            "storage node serving",
            node=config.name,
            az=config.az,
            address=f"{config.host}:{serving.port}",
            segments=len(self.store.segments),
        )
        running = [asyncio.create_task(task.loop(), name=task.name) for task in tasks]
        await until_stopped()

        log.info("storage node stopping", node=config.name)
        await serving.stop(config.shutdown_grace_ms / 1000)
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await peers.close()
        self.writer.stop()
        self.store.close()
        log.info("storage node stopped", node=self.config.name)
