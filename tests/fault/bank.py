"""The bank workload: transfers between accounts by several clients, and its checks.

Each client is a thread with its own psycopg connection to the writer endpoint.
A transfer is one transaction: BEGIN; UPDATE the source; UPDATE the destination;
INSERT a log row with an id the client chose; COMMIT. A client records the id of
every transfer whose COMMIT was acknowledged; on any error it drops the
connection, records the error, and starts a fresh transfer (with a fresh id) on a
new connection. A transfer whose COMMIT got no answer may or may not have
committed, and the checks allow both.

The checks (`check_bank`), on the writer and on each reader once caught up:
- the total balance is what the accounts started with;
- every acknowledged transfer id is in the log;
- no transfer is half-applied: each balance equals its initial value plus the sum
  of the logged transfers into it minus those out of it;
- SQLite's integrity check passes (`SELECT * FROM pragma_integrity_check()`, the
  one form the SQL front lets through).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from borealis.wait import wait_until

ACCOUNTS = 16
BALANCE_INITIAL = 1000
AMOUNT_MAX = 50
CLIENTS = 4
CONNECT_TIMEOUT_S = 5
# A failed client waits this long before a new connection, so a down endpoint is
# not hammered; bounded so a client resumes soon after the endpoint returns.
RETRY_BACKOFF_S = (0.05, 1.0)
STOP_TIMEOUT_S = 60.0
ERRORS_KEPT_MAX = 1000
# SQLSTATEs PostgreSQL itself returns to concurrent transactions (serialization
# failure, deadlock): a bank client retries them under any database, so they are
# not faults reaching the client.
CONCURRENCY_SQLSTATES = frozenset({"40001", "40P01"})


@dataclass(frozen=True)
class ClientError:
    at_s: float
    client: int
    phase: str
    sqlstate: str | None
    text: str

    @property
    def is_concurrency_conflict(self) -> bool:
        return self.sqlstate in CONCURRENCY_SQLSTATES


@dataclass
class ClientRecord:
    """What one client saw: acknowledged transfer ids, with when, and errors."""

    client: int
    acknowledged: dict[str, float] = field(default_factory=dict)
    errors: list[ClientError] = field(default_factory=list)
    attempts: int = 0


Connect = Callable[[], psycopg.Connection[Any]]


def connector(url: str, password: str) -> Connect:
    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(
            url, password=password, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
        )

    return connect


def create_bank(connect: Connect, accounts: int = ACCOUNTS) -> None:
    with connect() as connection:
        connection.execute("CREATE TABLE accounts (id integer PRIMARY KEY, balance integer)")
        connection.execute(
            "CREATE TABLE transfers (id text PRIMARY KEY, source integer, "
            "destination integer, amount integer)"
        )
        with connection.transaction():
            for account in range(accounts):
                connection.execute(
                    "INSERT INTO accounts VALUES (%s, %s)", (account, BALANCE_INITIAL)
                )


class BankWorkload:
    """CLIENTS threads doing transfers until `stop()`; seeded per client."""

    def __init__(
        self,
        connect: Connect,
        seed: int,
        clients: int = CLIENTS,
        accounts: int = ACCOUNTS,
        id_prefix: str = "",
    ) -> None:
        self._connect = connect
        self.seed = seed
        # Distinguishes the transfer ids of workloads run one after another.
        self.id_prefix = id_prefix
        self.accounts = accounts
        self.records = [ClientRecord(client) for client in range(clients)]
        self._stop = threading.Event()
        self._started_s = time.monotonic()
        self._threads = [
            threading.Thread(target=self._run, args=(record,), daemon=True, name=f"bank{index}")
            for index, record in enumerate(self.records)
        ]

    def start(self) -> BankWorkload:
        self._started_s = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(STOP_TIMEOUT_S)
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        assert not stuck, f"bank clients did not stop within {STOP_TIMEOUT_S}s: {stuck}"

    def now_s(self) -> float:
        """Seconds since the workload started (the clock of acks and errors)."""
        return time.monotonic() - self._started_s

    # --- what the clients saw ------------------------------------------------------

    def acknowledged(self) -> set[str]:
        return {each for record in self.records for each in list(record.acknowledged)}

    def acknowledged_count(self) -> int:
        return sum(len(record.acknowledged) for record in self.records)

    def errors(self) -> list[ClientError]:
        return sorted((e for r in self.records for e in list(r.errors)), key=lambda e: e.at_s)

    def fault_errors(self) -> list[ClientError]:
        """Errors other than the serialization failures any PostgreSQL client retries."""
        return [error for error in self.errors() if not error.is_concurrency_conflict]

    def acknowledged_between(self, start_s: float, end_s: float) -> int:
        return sum(
            1
            for record in self.records
            for at_s in list(record.acknowledged.values())
            if start_s <= at_s < end_s
        )

    def wait_for_acks(self, count: int, timeout_s: float, what: str) -> None:
        """Waits until `count` more transfers are acknowledged than now."""
        target = self.acknowledged_count() + count
        wait_until(lambda: self.acknowledged_count() >= target, timeout_s, 0.05, what)

    def summary(self) -> str:
        errors = self.errors()
        kinds: dict[str, int] = {}
        for error in errors:
            key = f"{error.phase}:{error.sqlstate or error.text[:60]}"
            kinds[key] = kinds.get(key, 0) + 1
        attempts = sum(record.attempts for record in self.records)
        examples = list({error.text: None for error in errors})[:3]
        return (
            f"acknowledged={self.acknowledged_count()} attempts={attempts} "
            f"errors={len(errors)} {kinds} examples={examples}"
        )

    # --- one client ----------------------------------------------------------------

    def _run(self, record: ClientRecord) -> None:
        rng = random.Random(f"{self.seed}/{self.id_prefix}/{record.client}")
        connection: psycopg.Connection[Any] | None = None
        backoff_s = RETRY_BACKOFF_S[0]
        while not self._stop.is_set():
            record.attempts += 1
            transfer_id = f"{self.id_prefix}c{record.client}-{record.attempts}"
            phase = "connect"
            try:
                if connection is None:
                    connection = self._connect()
                phase = "transfer"
                self._transfer(connection, rng, transfer_id)
                phase = "commit"
                connection.execute("COMMIT")
                record.acknowledged[transfer_id] = self.now_s()
                backoff_s = RETRY_BACKOFF_S[0]
            except psycopg.Error as error:
                self._note_error(record, phase, error)
                if connection is not None:
                    connection.close()
                connection = None
                self._stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, RETRY_BACKOFF_S[1])
        if connection is not None:
            connection.close()

    def _transfer(
        self, connection: psycopg.Connection[Any], rng: random.Random, transfer_id: str
    ) -> None:
        source, destination = rng.sample(range(self.accounts), 2)
        amount = rng.randint(1, AMOUNT_MAX)
        connection.execute("BEGIN")
        connection.execute(
            "UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source)
        )
        connection.execute(
            "UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, destination)
        )
        connection.execute(
            "INSERT INTO transfers VALUES (%s, %s, %s, %s)",
            (transfer_id, source, destination, amount),
        )

    def _note_error(self, record: ClientRecord, phase: str, error: psycopg.Error) -> None:
        if len(record.errors) >= ERRORS_KEPT_MAX:
            return
        sqlstate = getattr(error, "sqlstate", None)
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        record.errors.append(ClientError(self.now_s(), record.client, phase, sqlstate, text))


# --- checks --------------------------------------------------------------------------


@dataclass(frozen=True)
class BankState:
    balances: dict[int, int]
    transfers: dict[str, tuple[int, int, int]]


def read_bank(connection: psycopg.Connection[Any]) -> BankState:
    """Balances and the transfer log, read in one transaction (one snapshot)."""
    with connection.transaction():
        balances = dict(connection.execute("SELECT id, balance FROM accounts").fetchall())
        rows = connection.execute(
            "SELECT id, source, destination, amount FROM transfers"
        ).fetchall()
    return BankState(balances, {row[0]: (row[1], row[2], row[3]) for row in rows})


def integrity_check(connection: psycopg.Connection[Any]) -> list[str]:
    """SQLite's integrity check of the volume as this instance sees it ('ok' when sound)."""
    return [row[0] for row in connection.execute("SELECT * FROM pragma_integrity_check()")]


def bank_violations(
    state: BankState, acknowledged: set[str], accounts: int = ACCOUNTS
) -> list[str]:
    """Every broken invariant, described; empty when the bank is sound."""
    problems = []
    if sorted(state.balances) != list(range(accounts)):
        problems.append(f"accounts are {sorted(state.balances)}")
    total = sum(state.balances.values())
    if total != accounts * BALANCE_INITIAL:
        problems.append(f"total balance {total} != {accounts * BALANCE_INITIAL}")
    lost = sorted(acknowledged - set(state.transfers))
    if lost:
        problems.append(f"{len(lost)} acknowledged transfers missing from the log: {lost[:10]}")
    expected = dict.fromkeys(range(accounts), BALANCE_INITIAL)
    for source, destination, amount in state.transfers.values():
        expected[source] = expected.get(source, 0) - amount
        expected[destination] = expected.get(destination, 0) + amount
    half_applied = {
        account: (balance, expected.get(account))
        for account, balance in state.balances.items()
        if balance != expected.get(account)
    }
    if half_applied:
        problems.append(f"balances != initial + logged transfers: {half_applied}")
    return problems


def check_bank(
    connection: psycopg.Connection[Any], acknowledged: set[str], where: str
) -> BankState:
    """Asserts the bank invariants and the integrity check through `connection`."""
    state = read_bank(connection)
    problems = bank_violations(state, acknowledged)
    assert not problems, f"bank checks failed on {where}:\n" + "\n".join(problems)
    integrity = integrity_check(connection)
    assert integrity == ["ok"], f"integrity check failed on {where}: {integrity[:20]}"
    return state
