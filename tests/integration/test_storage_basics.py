"""Must-hold 1: six real nodes serve, and a batch appended to all six is acked with the right SCLs."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from borealis import metrics, rpc
from deploy.local import LocalCluster
from tests.support.redo_model import RedoModel
from tests.support.storage import (
    EPOCHS,
    append_all,
    clients,
    close_all,
    create_segment,
    run,
    segment_id,
)

pytestmark = pytest.mark.integration


def test_six_nodes_serve_and_ack_with_scl(storage_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        for node in storage_cluster.storage_nodes:
            assert await rpc.health_status(node.address, 2.0) == "SERVING"
        assert (
            sorted(node.az for node in storage_cluster.storage_nodes)
            == ["az-a"] * 2 + ["az-b"] * 2 + ["az-c"] * 2
        )
        all_clients = clients(storage_cluster)
        try:
            await create_segment(all_clients, storage_cluster, pg=0, first_page=0, page_count=16)
            model = RedoModel(first_page=0, page_count=16, seed=1)
            batch = model.records(50)
            acks = await append_all(all_clients, 0, batch)
            assert [ack.scl for ack in acks] == [model.lsn] * 6
            # records_new may be below 50 on a node whose gossip copied part of the
            # batch from a faster peer first; together the six acks hold it all.
            assert all(0 <= ack.records_new <= 50 for ack in acks)
            assert max(ack.records_new for ack in acks) == 50
            # Appending the same batch again is idempotent: nothing new, same SCL.
            again = await append_all(all_clients, 0, batch)
            assert [(ack.scl, ack.records_new) for ack in again] == [(model.lsn, 0)] * 6
            for client in all_clients:
                state = await client.state(segment_id(0))
                assert state.scl == model.lsn and state.records == 50
                for page in range(16):
                    image, page_lsn = await client.get_page(segment_id(0), EPOCHS, page, model.lsn)
                    assert (image, page_lsn) == model.page_at(page, model.lsn)
        finally:
            await close_all(all_clients)

    run(scenario)


def test_metrics_are_served_over_http(storage_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        all_clients = clients(storage_cluster)
        try:
            await create_segment(all_clients, storage_cluster, pg=3, first_page=48, page_count=16)
            model = RedoModel(first_page=48, page_count=16, seed=3)
            await append_all(all_clients, 3, model.records(10))
        finally:
            await close_all(all_clients)

    run(scenario)
    node = storage_cluster.node("s4")
    with urllib.request.urlopen(node.metrics_url, timeout=5) as response:
        assert response.status == 200
        samples = metrics.parse(response.read().decode())
    assert samples['borealis_storage_segment_scl{pg="3",volume="7"}'] > 0
    assert samples["borealis_storage_records_appended_total"] == 10
    assert samples["borealis_storage_fsyncs_total"] >= 1
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(node.metrics_url.replace("/metrics", "/other"), timeout=5)
    assert error.value.code == 404
