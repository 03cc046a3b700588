"""Issue 6's must-holds under injected faults, with the bank workload.

Each test starts a fault cluster (six storage nodes behind network-fault proxies,
a writer, a reader, the router), runs the bank through the router's writer
endpoint, injects faults drawn from its seed (printed), heals, and checks the bank
on the writer and on the reader (tests/fault/bank.py). Fault durations are counted
in acknowledged transfers rather than seconds, so a slow machine stretches them
instead of skipping them.

- Kill 2 storage nodes under load: no error reaches clients (must hold 2a).
- Kill a whole AZ and one more node: reads continue, writes wait and resume when a
  node returns (2b).
- Kill -9 the writer under load and restart it: writes are accepted again through
  the writer endpoint and nothing acknowledged is lost (1).
- SIGSTOP/SIGCONT of storage nodes and of the reader; network faults (black hole,
  reset, delay, a gossip partition between storage nodes); storage failpoints:
  no error reaches clients.
- The bank checks hold for every seed (5).

BOREALIS_SOAK_S=SECONDS runs `test_soak`: rounds of random faults for that long.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from borealis.wait import wait_until
from tests.fault.bank import (
    ACCOUNTS,
    BALANCE_INITIAL,
    BankWorkload,
    check_bank,
    create_bank,
    read_bank,
)
from tests.fault.conftest import FaultCluster, ci_seeds, soak_seconds
from tests.fault.faults import FaultInjector

pytestmark = [pytest.mark.fault, pytest.mark.integration]

WARM_UP_ACKS = 20
ACKS_TIMEOUT_S = 60.0
CATCH_UP_TIMEOUT_S = 60.0
# How long the AZ+1 test watches for commits that must not happen. Observing an
# absence needs a window of time; this one is well past any commit in flight.
STALL_WINDOW_S = 3.0
STALL_SETTLE_S = 2.0
READ_TIMEOUT_S = 10.0
SOAK_ROUND_ACKS = (20, 60)


@contextmanager
def bank_under_load(
    cluster: FaultCluster, seed: int, id_prefix: str = "", create: bool = True
) -> Iterator[BankWorkload]:
    """The bank created (once) and clients running, warmed up; stopped on exit."""
    connect = cluster.connector("writer")
    if create:
        create_bank(connect)
    workload = BankWorkload(connect, seed, id_prefix=id_prefix).start()
    try:
        workload.wait_for_acks(WARM_UP_ACKS, ACKS_TIMEOUT_S, "the bank to warm up")
        yield workload
    finally:
        workload.stop()
        print("bank:", workload.summary())


def check_everywhere(
    cluster: FaultCluster, workload: BankWorkload, earlier: frozenset[str] = frozenset()
) -> None:
    """The bank checks on the writer, then on each reader once it caught up, with
    the transfers `workload` and earlier workloads (`earlier`) saw acknowledged."""
    acknowledged = workload.acknowledged() | earlier
    with cluster.connector("writer")() as writer:
        state = check_bank(writer, acknowledged, "the writer endpoint")
    logged = len(state.transfers)
    for reader in cluster.readers():
        with cluster.connector(reader.name)() as connection:
            wait_until(
                lambda connection=connection: len(read_bank(connection).transfers) == logged,
                CATCH_UP_TIMEOUT_S,
                0.1,
                f"{reader.name} to catch up to {logged} transfers",
            )
            check_bank(connection, acknowledged, reader.name)
    print(f"bank checks ok: {logged} transfers logged, {len(acknowledged)} acknowledged")


def assert_no_client_errors(workload: BankWorkload, injector: FaultInjector) -> None:
    errors = workload.fault_errors()
    assert not errors, (
        f"{len(errors)} errors reached clients (seed {injector.seed}):\n"
        + "\n".join(map(str, errors[:20]))
        + "\nfaults:\n"
        + "\n".join(injector.events)
    )


def total_balance(connection: psycopg.Connection[Any]) -> int:
    row = connection.execute("SELECT sum(balance) FROM accounts").fetchone()
    assert row is not None
    return int(row[0])


def read_within(cluster: FaultCluster, endpoint: str, timeout_s: float) -> int | str:
    """The total balance read through `endpoint` on a new connection, or why not,
    in a thread so a read that hangs fails the test instead of stalling it."""
    outcome: list[int | str] = []
    stage = ["connect"]

    def read() -> None:
        try:
            with cluster.connector(endpoint)() as connection:
                stage[0] = "query"
                outcome.append(total_balance(connection))
        except psycopg.Error as error:
            outcome.append(f"error: {error!r}")

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else f"no answer within {timeout_s}s at {stage[0]}"


# --- 2a: two storage nodes down --------------------------------------------------------


@ci_seeds(2)
def test_two_storage_nodes_killed_under_load_no_client_errors(
    fault_cluster: FaultCluster, fault_seed: int
) -> None:
    injector = fault_cluster.injector(fault_seed)
    victims = injector.storage_nodes(2)
    with bank_under_load(fault_cluster, fault_seed) as workload:
        for node in victims:
            injector.kill(node)
        acks = injector.rng.randint(30, 80)
        workload.wait_for_acks(acks, ACKS_TIMEOUT_S, f"{acks} commits with 2 nodes down")
        injector.heal()
        workload.wait_for_acks(WARM_UP_ACKS, ACKS_TIMEOUT_S, "commits after the restarts")
    assert_no_client_errors(workload, injector)
    check_everywhere(fault_cluster, workload)


# --- 2b: a whole AZ and one more node down ---------------------------------------------


def test_az_plus_one_down_reads_continue_writes_wait_and_resume(
    fault_cluster: FaultCluster, fault_seed: int
) -> None:
    injector = fault_cluster.injector(fault_seed)
    az, victims = injector.az_plus_one()
    total = ACCOUNTS * BALANCE_INITIAL
    with bank_under_load(fault_cluster, fault_seed) as workload:
        injector.note(f"AZ {az} down, and {victims[-1].name}")
        for node in victims:
            injector.kill(node)
        killed_at_s = workload.now_s()
        # Reads continue through the reader endpoint and on the reader itself.
        assert read_within(fault_cluster, "reader", READ_TIMEOUT_S) == total
        reader_name = fault_cluster.readers()[0].name
        assert read_within(fault_cluster, reader_name, READ_TIMEOUT_S) == total
        # Writes wait: nothing is acknowledged once commits in flight settled.
        wait_until(
            lambda: workload.now_s() >= killed_at_s + STALL_SETTLE_S + STALL_WINDOW_S,
            STALL_SETTLE_S + STALL_WINDOW_S + 5,
            what="the stall window",
        )
        window = (killed_at_s + STALL_SETTLE_S, killed_at_s + STALL_SETTLE_S + STALL_WINDOW_S)
        stalled_acks = workload.acknowledged_between(*window)
        # Writes resume once one node returns (4 of 6 reachable again).
        returning = injector.rng.choice(victims)
        injector.restart(returning)
        workload.wait_for_acks(WARM_UP_ACKS, ACKS_TIMEOUT_S, f"commits after {returning.name}")
        injector.heal()
        workload.wait_for_acks(WARM_UP_ACKS, ACKS_TIMEOUT_S, "commits after healing")
    assert stalled_acks == 0, f"{stalled_acks} commits acknowledged with AZ+1 down"
    assert_no_client_errors(workload, injector)
    check_everywhere(fault_cluster, workload)


def test_az_plus_one_down_reads_continue_through_the_writer(
    fault_cluster: FaultCluster, fault_seed: int
) -> None:
    injector = fault_cluster.injector(fault_seed)
    _, victims = injector.az_plus_one()
    total = ACCOUNTS * BALANCE_INITIAL
    with bank_under_load(fault_cluster, fault_seed) as workload:
        for node in victims:
            injector.kill(node)
        reads = {
            endpoint: read_within(fault_cluster, endpoint, READ_TIMEOUT_S)
            for endpoint in ("writer", fault_cluster.cluster.writer().name)
        }
        injector.note(f"reads through the writer with AZ+1 down: {reads}")
        injector.heal()
        workload.wait_for_acks(WARM_UP_ACKS, ACKS_TIMEOUT_S, "commits after healing")
    check_everywhere(fault_cluster, workload)
    assert reads == {endpoint: total for endpoint in reads}, reads


# --- 1: kill -9 the writer ---------------------------------------------------------------


def test_writer_killed_under_load_restarts_and_loses_nothing(
    fault_cluster: FaultCluster, fault_seed: int
) -> None:
    injector = fault_cluster.injector(fault_seed)
    writer = fault_cluster.cluster.writer()
    with bank_under_load(fault_cluster, fault_seed) as workload:
        for _ in range(2):
            acks = injector.rng.randint(10, 60)
            workload.wait_for_acks(acks, ACKS_TIMEOUT_S, f"{acks} commits before the kill")
            injector.kill(writer)
            # No supervisor with LocalCluster: the test restarts the writer in place.
            injector.restart(writer)
            restarted_at_s = workload.now_s()
            workload.wait_for_acks(
                WARM_UP_ACKS, ACKS_TIMEOUT_S, "commits through the writer endpoint"
            )
            injector.note(f"writes accepted {workload.now_s() - restarted_at_s:.2f}s after restart")
    check_everywhere(fault_cluster, workload)


# --- SIGSTOP / SIGCONT ---------------------------------------------------------------------


def test_storage_nodes_and_reader_paused_no_client_errors(
    fault_cluster: FaultCluster, fault_seed: int
) -> None:
    injector = fault_cluster.injector(fault_seed)
    reader = fault_cluster.readers()[0]
    with bank_under_load(fault_cluster, fault_seed) as workload:
        for _ in range(2):
            victims = injector.storage_nodes(2)
            for node in victims:
                injector.stop_signal(node)
            acks = injector.rng.randint(30, 80)
            workload.wait_for_acks(acks, ACKS_TIMEOUT_S, f"{acks} commits with 2 nodes paused")
            injector.heal()
        injector.stop_signal(reader)
        workload.wait_for_acks(WARM_UP_ACKS, ACKS_TIMEOUT_S, "commits with the reader paused")
        injector.heal()
        workload.wait_for_acks(WARM_UP_ACKS, ACKS_TIMEOUT_S, "commits after SIGCONT")
    assert_no_client_errors(workload, injector)
    check_everywhere(fault_cluster, workload)


# --- network faults -------------------------------------------------------------------------


def test_network_faults_into_storage_no_client_errors(
    fault_cluster: FaultCluster, fault_seed: int
) -> None:
    injector = fault_cluster.injector(fault_seed)
    nodes = fault_cluster.cluster.storage_nodes
    writer_pid = fault_cluster.cluster.writer().pid
    assert writer_pid is not None
    with bank_under_load(fault_cluster, fault_seed) as workload:
        # Two nodes cut off: one silent, one refusing.
        silent, refusing = injector.storage_nodes(2)
        injector.network(silent.name, "blackhole")
        injector.network(refusing.name, "drop")
        workload.wait_for_acks(injector.rng.randint(30, 60), ACKS_TIMEOUT_S, "commits, 2 cut off")
        injector.heal()
        # A slow link from the writer to two nodes.
        for node in injector.storage_nodes(2):
            injector.network(node.name, f"delay({injector.rng.randint(20, 200)})", [writer_pid])
        workload.wait_for_acks(injector.rng.randint(20, 40), ACKS_TIMEOUT_S, "commits, slow links")
        injector.heal()
        # A partition between storage nodes only: one node's peers cannot reach it
        # (gossip), while the writer still can.
        isolated = injector.rng.choice(nodes)
        peers = [node.pid for node in nodes if node is not isolated and node.pid is not None]
        injector.network(isolated.name, "blackhole", peers)
        workload.wait_for_acks(injector.rng.randint(20, 40), ACKS_TIMEOUT_S, "commits, gossip cut")
        injector.heal()
        workload.wait_for_acks(WARM_UP_ACKS, ACKS_TIMEOUT_S, "commits after healing")
    assert_no_client_errors(workload, injector)
    check_everywhere(fault_cluster, workload)


# --- failpoints -----------------------------------------------------------------------------


def test_storage_failpoints_no_client_errors(fault_cluster: FaultCluster, fault_seed: int) -> None:
    injector = fault_cluster.injector(fault_seed)
    slow, slow_too, failing = injector.storage_nodes(3)
    with bank_under_load(fault_cluster, fault_seed) as workload:
        for node in (slow, slow_too):
            action = f"sleep({injector.rng.randint(50, 300)})"
            injector.failpoint(node, "storage.append.before_ack", action)
        injector.failpoint(failing, "storage.append.before_write", "30%error")
        injector.failpoint(failing, "storage.get_page", "error")
        workload.wait_for_acks(injector.rng.randint(30, 60), ACKS_TIMEOUT_S, "commits, failpoints")
        injector.heal()
        workload.wait_for_acks(WARM_UP_ACKS, ACKS_TIMEOUT_S, "commits after healing")
    assert_no_client_errors(workload, injector)
    check_everywhere(fault_cluster, workload)


# --- soak -------------------------------------------------------------------------------------


def _soak_round(injector: FaultInjector, cluster: FaultCluster, workload: BankWorkload) -> None:
    """One random fault of the menu, held for a random number of commits, healed.
    The writer kill is in the menu: its clients may see errors (checked by the
    bank invariants, not by an error count)."""
    choice = injector.rng.choice(["kill2", "pause2", "network", "failpoint", "writer"])
    acks = injector.rng.randint(*SOAK_ROUND_ACKS)
    if choice == "kill2":
        for node in injector.storage_nodes(2):
            injector.kill(node)
    elif choice == "pause2":
        for node in injector.storage_nodes(2):
            injector.stop_signal(node)
    elif choice == "network":
        for node in injector.storage_nodes(2):
            fault = injector.rng.choice(["blackhole", "drop", "delay(100)"])
            injector.network(node.name, fault)
    elif choice == "failpoint":
        for node in injector.storage_nodes(2):
            injector.failpoint(node, "storage.append.before_ack", "sleep(150)")
    else:
        injector.kill(cluster.cluster.writer())
        injector.heal()
    workload.wait_for_acks(acks, ACKS_TIMEOUT_S, f"{acks} commits under {choice}")
    injector.heal()


@pytest.mark.skipif(soak_seconds() <= 0, reason="set BOREALIS_SOAK_S to run the soak")
def test_soak(fault_cluster: FaultCluster, fault_seed: int) -> None:
    """Rounds of random faults until BOREALIS_SOAK_S elapse; the bank checks after
    each batch of rounds, with a new workload (and new transfer ids) per batch."""
    injector = fault_cluster.injector(fault_seed)
    deadline = time.monotonic() + soak_seconds()
    batch = 0
    create = True
    acknowledged: frozenset[str] = frozenset()
    while time.monotonic() < deadline:
        batch += 1
        with bank_under_load(fault_cluster, fault_seed, f"b{batch}-", create) as workload:
            for _ in range(injector.rng.randint(2, 5)):
                _soak_round(injector, fault_cluster, workload)
        create = False
        check_everywhere(fault_cluster, workload, acknowledged)
        acknowledged = acknowledged | workload.acknowledged()
        injector.note(f"soak batch {batch} checked: {workload.summary()}")
