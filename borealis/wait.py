"""Polling with a deadline, instead of sleeping and hoping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from borealis.errors import Unavailable

T = TypeVar("T")


def wait_until(
    check: Callable[[], T], timeout_s: float, interval_s: float = 0.05, what: str = ""
) -> T:
    """Calls `check` until it returns a truthy value or stops raising; its value.

    On the deadline, raises Unavailable naming `what` and the last failure.
    """
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except Exception as error:  # noqa: BLE001 - retried until the deadline
            last = error
        if time.monotonic() >= deadline:
            raise Unavailable(
                f"timed out after {timeout_s}s waiting for {what or check}", last=repr(last)
            )
        time.sleep(interval_s)


async def wait_until_async(
    check: Callable[[], Awaitable[T]], timeout_s: float, interval_s: float = 0.05, what: str = ""
) -> T:
    """The event-loop form of wait_until, for async checks."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            value = await check()
            if value:
                return value
            last = value
        except Exception as error:  # noqa: BLE001 - retried until the deadline
            last = error
        if time.monotonic() >= deadline:
            raise Unavailable(
                f"timed out after {timeout_s}s waiting for {what or check}", last=repr(last)
            )
        await asyncio.sleep(interval_s)
