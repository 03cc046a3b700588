"""Runs a background task every interval, or sooner when woken; never lets it die."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from borealis.log import get_logger

log = get_logger("storage_node.periodic")


class Periodic:
    def __init__(self, name: str, interval_ms: int, run_once: Callable[[], Awaitable[str]]) -> None:
        self.name = name
        self._interval_s = interval_ms / 1000
        self._run_once = run_once
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def wake(self) -> None:
        self._wake.set()

    async def run_now(self, run: Callable[[], Awaitable[str]] | None = None) -> str:
        """One pass (of `run`, else the periodic one), serialised with the periodic ones."""
        async with self._lock:
            return await (run or self._run_once)()

    async def loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            try:
                summary = await self.run_now()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.error("background task failed", exc_info=True, task=self.name)
                continue
            if summary:
                log.debug("background task ran", task=self.name, summary=summary)
