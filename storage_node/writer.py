"""The writer thread: the only thread that writes LMDB, with group commit.

Handlers on the event loop submit operations (`op(txn) -> publish`, see
store.py) and await them. The thread takes whatever is queued, up to
`group_commit_batches_max`, runs each in its own nested transaction (so one
operation's failure cannot leave half its writes in the others' commit), commits
once (one fsync for the whole group), then publishes each result and wakes its
caller. Nothing is acknowledged before the commit returns.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

import lmdb

from borealis import faults
from borealis.errors import BorealisError, ResourceExhausted
from borealis.log import get_logger
from storage_node.store import Publish, SegmentStore

log = get_logger("storage_node.writer")

Operation = Callable[[lmdb.Transaction], Publish]


class Writer:
    def __init__(
        self, store: SegmentStore, group_batches_max: int, on_commit: Callable[[int], None]
    ) -> None:
        self._store = store
        self._group_batches_max = group_batches_max
        self._on_commit = on_commit
        # Bounded by the callers' semaphore; the limit here is a backstop.
        self._queue: queue.Queue[tuple[Operation, asyncio.Future[Any]] | None] = queue.Queue(
            maxsize=4096
        )
        self._thread = threading.Thread(target=self._run, name="lmdb-writer", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    async def run(self, operation: Operation) -> Any:
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        try:
            self._queue.put_nowait((operation, future))
        except queue.Full:
            raise ResourceExhausted("storage writer queue is full") from None
        return await future

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            while len(group) < self._group_batches_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                group.append(item)
            self._commit(group)

    def _commit(self, group: list[tuple[Operation, asyncio.Future[Any]]]) -> None:
        outcomes: list[Publish | BaseException] = []
        try:
            with self._store.env.begin(write=True) as txn:
                for operation, _future in group:
                    outcomes.append(self._run_nested(txn, operation))
                faults.point("storage.writer.before_commit")
            faults.point("storage.writer.after_commit")
        except Exception as error:  # noqa: BLE001 - the whole group fails alike
            log.error(
                "group commit failed; reloading segment state",
                error=repr(error),
                batches=len(group),
            )
            # Working state (chains, meta) ran ahead of what is on disk: rebuild it.
            self._store.load()
            failure = (
                error
                if isinstance(error, BorealisError)
                else ResourceExhausted(f"storage write failed: {error!r}")
            )
            for _operation, future in group:
                self._resolve(future, failure)
            return
        self._on_commit(len(group))
        for (_operation, future), outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self._resolve(future, outcome)
            else:
                self._resolve(future, outcome, published=True)

    def _run_nested(self, txn: lmdb.Transaction, operation: Operation) -> Publish | BaseException:
        try:
            with self._store.env.begin(write=True, parent=txn) as child:
                return operation(child)
        except BorealisError as error:
            return error

    def _resolve(self, future: asyncio.Future[Any], outcome: Any, published: bool = False) -> None:
        assert self._loop is not None
        if published:
            # Publishing runs here, in commit order, so readers never see a state
            # whose transaction is not durable, and later commits publish later.
            try:
                value = outcome()
            except Exception as error:  # noqa: BLE001 - reported to the caller
                value = error
            self._loop.call_soon_threadsafe(_set, future, value)
        else:
            self._loop.call_soon_threadsafe(_set, future, outcome)


def _set(future: asyncio.Future[Any], value: Any) -> None:
    if future.done():
        return  # The caller gave up (deadline); the write is durable all the same.
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)
